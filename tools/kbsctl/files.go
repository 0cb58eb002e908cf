package main

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// The commands that change the log check here, before their first
// request, that every file they will write can be written; and they write
// receipts only to new files, so that no receipt is ever overwritten.

// probeDir checks that dir is an existing directory in which files can be
// created, by creating and removing one.
func probeDir(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	f, err := os.CreateTemp(dir, ".kbsctl-probe-*")
	if err != nil {
		return fmt.Errorf("can't create files in %s: %w", dir, errors.Unwrap(err))
	}
	name := f.Name()
	f.Close()
	return os.Remove(name)
}

// madeDirs are the directories a command created before its first request,
// removed again (when still empty) if it ends without writing into them.
type madeDirs []string

// mkdirAll is os.MkdirAll that records the directories it creates, and then
// checks that files can be created in dir.
func (m *madeDirs) mkdirAll(dir string) error {
	var missing []string
	for d := filepath.Clean(dir); ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err == nil {
			if !fi.IsDir() {
				return fmt.Errorf("%s is not a directory", d)
			}
			break
		}
		// ENOTDIR: a file on the way, found further up.
		if !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, syscall.ENOTDIR) {
			return err
		}
		missing = append(missing, d)
		if filepath.Dir(d) == d {
			break
		}
	}
	for i := len(missing) - 1; i >= 0; i-- {
		if err := os.Mkdir(missing[i], 0o700); err != nil {
			return err
		}
		*m = append(*m, missing[i])
	}
	return probeDir(dir)
}

// undo removes the directories mkdirAll created, deepest first, if they
// are empty.
func (m *madeDirs) undo() {
	for i := len(*m) - 1; i >= 0; i-- {
		os.Remove((*m)[i])
	}
	*m = nil
}

// checkNewFile checks that file does not exist and can be created.
func checkNewFile(flagName, file string) error {
	if _, err := os.Lstat(file); err == nil {
		return usageErr("%s %s exists: refusing to overwrite it (move it away or choose another name)", flagName, file)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if err := probeDir(filepath.Dir(file)); err != nil {
		return usageErr("%s %s: %v", flagName, file, err)
	}
	return nil
}

// writeNew writes data to file, which must not exist, and syncs it.
func writeNew(file string, data []byte, perm os.FileMode) (err error) {
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(file)
		}
	}()
	if _, err := f.Write(data); err != nil {
		return err
	}
	return f.Sync()
}

// receiptName is the receipt file of a change of version at log index:
// base.v<version>.<index>.receipt.
func receiptName(base string, version, index uint64) string {
	return fmt.Sprintf("%s.v%d.%d.receipt", base, version, index)
}

// writeReceipt writes a receipt to a new file: name, or when name exists
// with other contents (a receipt from another log), name with -2, -3, ...
// before ".receipt". A file already holding exactly this receipt is kept.
// It returns the file written.
func writeReceipt(name string, raw []byte) (string, error) {
	stem := strings.TrimSuffix(name, ".receipt")
	for i := 1; i <= 100; i++ {
		f := name
		if i > 1 {
			f = fmt.Sprintf("%s-%d.receipt", stem, i)
		}
		err := writeNew(f, raw, 0o644)
		if !errors.Is(err, fs.ErrExist) {
			return f, err
		}
		if old, rerr := os.ReadFile(f); rerr == nil && bytes.Equal(old, raw) {
			return f, nil
		}
	}
	return "", fmt.Errorf("couldn't find a free receipt file name like %s", name)
}

// saveReceipt writes a receipt (writeReceipt) to name, or with exact set,
// to exactly name (the caller checked it does not exist). If that fails it
// prints the receipt on stderr: a receipt is never lost.
func (e *env) saveReceipt(name string, exact bool, raw []byte) (string, error) {
	var err error
	file := name
	if exact {
		err = writeNew(name, raw, 0o644)
	} else {
		file, err = writeReceipt(name, raw)
	}
	if err != nil {
		fmt.Fprintf(e.stderr, "kbsctl: couldn't write the receipt to %s (%v); here it is, keep it:\n%s\n", name, err, raw)
		return "", fmt.Errorf("couldn't write the receipt: %w", err)
	}
	return file, nil
}

// keepReceipt writes the receipt of a logged change: to explicit, a new
// file the caller checked before the change, or else next to base as
// receiptName(base, version, index).
func (e *env) keepReceipt(explicit, base string, version, index uint64, raw []byte) (string, error) {
	if explicit != "" {
		return e.saveReceipt(explicit, true, raw)
	}
	return e.saveReceipt(receiptName(base, version, index), false, raw)
}
