package inference

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/kbs-dev/kbs/kbs/api"
)

// MaxEvent bounds one server-sent event of an inference server's stream
// (an OpenAI chunk is a few hundred bytes).
const MaxEvent = api.MaxInferenceFrame

// An EventReader splits a text/event-stream (the inference server's
// streamed answer) into events: the lines up to and including each blank
// line. Lines may end in "\n", "\r\n" or "\r"; each event is returned
// with its lines ending in "\n" and one blank line after them, ready to be
// written to an SSE client as it is. The bytes of the stream are not
// otherwise interpreted.
type EventReader struct {
	r   *bufio.Reader
	max int
	cr  bool // the last byte read was '\r'
}

// NewEventReader returns a reader of the events of r, each at most max
// bytes (0: MaxEvent).
func NewEventReader(r io.Reader, max int) *EventReader {
	if max <= 0 {
		max = MaxEvent
	}
	return &EventReader{r: bufio.NewReaderSize(r, 32<<10), max: max}
}

// ErrEventTooLarge reports an event over the reader's limit.
var ErrEventTooLarge = errors.New("server-sent event too large")

// Next returns the next event, or io.EOF after the last. A stream that
// ends inside an event returns that event (its blank line added), then
// io.EOF. Blank lines between events are skipped.
func (e *EventReader) Next() ([]byte, error) {
	var ev []byte
	for {
		line, err := e.line()
		if err == io.EOF && len(line) == 0 {
			if len(ev) == 0 {
				return nil, io.EOF
			}
			return append(ev, '\n'), nil
		}
		if err != nil && err != io.EOF {
			return nil, err
		}
		if len(line) == 0 {
			if len(ev) == 0 {
				continue
			}
			return append(ev, '\n'), nil
		}
		if len(ev)+len(line)+2 > e.max {
			return nil, fmt.Errorf("%w: more than %d bytes", ErrEventTooLarge, e.max)
		}
		ev = append(append(ev, line...), '\n')
		if err == io.EOF {
			return append(ev, '\n'), nil
		}
	}
}

// line returns the next line without its ending, at most e.max bytes.
func (e *EventReader) line() ([]byte, error) {
	var l []byte
	for {
		c, err := e.r.ReadByte()
		if err != nil {
			return l, err
		}
		if e.cr {
			e.cr = false
			if c == '\n' {
				continue // the \n of a \r\n
			}
		}
		switch c {
		case '\n':
			return l, nil
		case '\r':
			e.cr = true
			return l, nil
		}
		if len(l) >= e.max {
			return nil, fmt.Errorf("%w: a line of more than %d bytes", ErrEventTooLarge, e.max)
		}
		l = append(l, c)
	}
}

// IsDone reports whether ev is the OpenAI stream's end marker,
// "data: [DONE]".
func IsDone(ev []byte) bool {
	return bytes.Equal(bytes.TrimRight(ev, "\n"), []byte("data: [DONE]"))
}

// A FrameWriter writes sealed answer frames to the proxy as server-sent
// events, "data: <base64>" and a blank line each, flushing after each.
type FrameWriter struct {
	w  io.Writer
	rc *http.ResponseController
}

// NewFrameWriter returns a frame writer on w; when w is an
// http.ResponseWriter each frame is flushed as it is written.
func NewFrameWriter(w io.Writer) *FrameWriter {
	fw := &FrameWriter{w: w}
	if rw, ok := w.(http.ResponseWriter); ok {
		fw.rc = http.NewResponseController(rw)
	}
	return fw
}

// Write writes one frame and flushes it.
func (f *FrameWriter) Write(frame []byte) error {
	b := make([]byte, 0, 8+base64.StdEncoding.EncodedLen(len(frame)))
	b = append(b, "data: "...)
	b = base64.StdEncoding.AppendEncode(b, frame)
	b = append(b, "\n\n"...)
	if _, err := f.w.Write(b); err != nil {
		return err
	}
	if f.rc != nil {
		return f.rc.Flush()
	}
	return nil
}

// A FrameReader reads the frames a FrameWriter wrote: each event must be
// exactly one "data: " line of standard base64 followed by a blank line;
// comment lines (": ...", which proxies insert as keep-alives) are
// skipped. Anything else is an error. The frames are not authenticated
// here (api.ResponseOpener does that).
type FrameReader struct {
	r *bufio.Reader
}

// NewFrameReader returns a reader of the frames in r.
func NewFrameReader(r io.Reader) *FrameReader {
	return &FrameReader{r: bufio.NewReaderSize(r, 64<<10)}
}

// ErrFraming reports a worker answer that is not a stream of frames.
var ErrFraming = errors.New("the worker's answer is not a stream of kbs frames")

// Next returns the next frame's bytes, or io.EOF at the end of the
// stream (between frames).
func (f *FrameReader) Next() ([]byte, error) {
	for {
		line, err := f.readLine()
		if err != nil {
			return nil, err
		}
		if len(line) > 0 && line[0] == ':' {
			continue
		}
		b64, ok := bytes.CutPrefix(line, []byte("data: "))
		if !ok {
			return nil, fmt.Errorf("%w: a line that is not data", ErrFraming)
		}
		frame := make([]byte, base64.StdEncoding.DecodedLen(len(b64)))
		n, err := base64.StdEncoding.Strict().Decode(frame, b64)
		if err != nil {
			return nil, fmt.Errorf("%w: bad base64", ErrFraming)
		}
		blank, err := f.readLine()
		if err == io.EOF {
			return nil, fmt.Errorf("%w: cut inside an event", ErrFraming)
		}
		if err != nil {
			return nil, err
		}
		if len(blank) != 0 {
			return nil, fmt.Errorf("%w: an event of more than one line", ErrFraming)
		}
		return frame[:n], nil
	}
}

// readLine returns a line without its "\n" (a line may not hold '\r'),
// at most api.MaxFrameEvent bytes; io.EOF only at a line boundary.
func (f *FrameReader) readLine() ([]byte, error) {
	var l []byte
	for {
		chunk, err := f.r.ReadSlice('\n')
		if len(l)+len(chunk) > api.MaxFrameEvent+1 {
			return nil, fmt.Errorf("%w: a line of more than %d bytes", ErrFraming, api.MaxFrameEvent)
		}
		l = append(l, chunk...)
		switch {
		case err == bufio.ErrBufferFull:
			continue
		case err == io.EOF && len(l) == 0:
			return nil, io.EOF
		case err == io.EOF:
			return nil, fmt.Errorf("%w: cut inside a line", ErrFraming)
		case err != nil:
			return nil, err
		}
		l = l[:len(l)-1]
		if bytes.IndexByte(l, '\r') >= 0 {
			return nil, fmt.Errorf("%w: a carriage return", ErrFraming)
		}
		return l, nil
	}
}
