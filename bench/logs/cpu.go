package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// cpuUsed returns the CPU time (user and system) used so far by this
// process and, with servers, by the Trillian stack that scripts/trillian.sh
// runs: trillian_log_server, trillian_log_signer and PostgreSQL (its
// postmaster, the backends it has reaped, and those alive), found through
// the run directory the script exports as KBS_TRILLIAN_RUN_DIR. Only
// differences between two calls mean anything; the stack's part is 0
// without that directory.
func cpuUsed(servers bool) time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	d := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	dir := os.Getenv("KBS_TRILLIAN_RUN_DIR")
	if !servers || dir == "" {
		return d
	}
	pids, _ := filepath.Glob(filepath.Join(dir, "*.pid"))
	for _, f := range pids {
		if pid, ok := readPid(f); ok {
			d += procCPU(pid, false)
		}
	}
	pgDir, err := os.ReadFile(filepath.Join(dir, "pg_dir"))
	if err != nil {
		return d
	}
	postmaster, ok := readPid(filepath.Join(strings.TrimSpace(string(pgDir)), "data", "postmaster.pid"))
	if !ok {
		return d
	}
	d += procCPU(postmaster, true)
	procs, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, f := range procs {
		if fs := statFields(f); len(fs) > 12 && fs[1] == strconv.Itoa(postmaster) {
			d += ticks(fs[11]) + ticks(fs[12])
		}
	}
	return d
}

// readPid reads the number on the first line of a pid file.
func readPid(name string) (int, bool) {
	b, err := os.ReadFile(name)
	if err != nil {
		return 0, false
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	return pid, err == nil && pid > 0
}

// procCPU returns the user and system time of process pid, and with
// children that of its children it has waited for.
func procCPU(pid int, children bool) time.Duration {
	fs := statFields(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if len(fs) < 15 {
		return 0
	}
	d := ticks(fs[11]) + ticks(fs[12])
	if children {
		d += ticks(fs[13]) + ticks(fs[14])
	}
	return d
}

// statFields returns the fields of /proc/PID/stat after the command name:
// state, ppid, … (fields 3 and up of proc(5)), or nil.
func statFields(name string) []string {
	b, err := os.ReadFile(name)
	if err != nil {
		return nil
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 > len(s) {
		return nil
	}
	return strings.Fields(s[i+2:])
}

// ticks converts clock ticks (USER_HZ, 100 on Linux) to a duration.
func ticks(s string) time.Duration {
	n, _ := strconv.ParseInt(s, 10, 64)
	return time.Duration(n) * (time.Second / 100)
}
