//go:build ignore

// gen_inference writes the encrypted-inference fixtures of kbs/api's tests
// under testdata/prompt.key: inference-request.bin, a sealed chat request
// (fixed request id, time and worker instance; the nonce is random), and
// inference-answer.txt, the worker's answer to it as the event stream the
// proxy reads (head, one streamed event, [DONE], the final frame). Run
// from kbs/api: go run testdata/gen_inference.go
package main

import (
	"bytes"
	"log"
	"os"

	"github.com/kbs-dev/kbs/kbs/api"
	"github.com/kbs-dev/kbs/kbs/inference"
)

func main() {
	raw, err := os.ReadFile("testdata/prompt.key")
	if err != nil {
		log.Fatal(err)
	}
	k, err := api.ParseKeyFile(raw)
	if err != nil {
		log.Fatal(err)
	}
	h := &api.InferenceRequest{Time: 1767225600, Method: "POST", Path: "/v1/chat/completions", Model: "kbs-echo", Stream: true}
	copy(h.ID[:], "fixture-request!")
	copy(h.Worker[:], "fixture-worker!!")
	req, err := api.SealInferenceRequest(k, h, []byte(`{"model":"kbs-echo","stream":true,"messages":[{"role":"user","content":"hello"}]}`))
	if err != nil {
		log.Fatal(err)
	}
	s, err := api.NewResponseSealer(k, req)
	if err != nil {
		log.Fatal(err)
	}
	var ans bytes.Buffer
	fw := inference.NewFrameWriter(&ans)
	head, _ := s.SealHead(api.InferenceHead{Status: 200, ContentType: "text/event-stream"})
	fw.Write(head)
	for _, ev := range []string{`data: {"choices":[{"index":0,"delta":{"content":"HELLO"}}]}` + "\n\n", "data: [DONE]\n\n"} {
		f, _ := s.Seal([]byte(ev), false)
		fw.Write(f)
	}
	f, _ := s.Seal(nil, true)
	fw.Write(f)
	if err := os.WriteFile("testdata/inference-request.bin", req, 0o644); err != nil {
		log.Fatal(err)
	}
	if err := os.WriteFile("testdata/inference-answer.txt", ans.Bytes(), 0o644); err != nil {
		log.Fatal(err)
	}
}
