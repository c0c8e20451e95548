package main

// The engine: the stand-in's Python process (the llama.cpp engine, the model
// store and the scheduler), started by `serve` as Ollama starts its runners,
// and spoken to over a Unix socket that nothing else can reach. The front sends
// it only requests it has already parsed and checked the way Ollama does.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// engineError is a refusal from the engine: its HTTP status, its message and,
// for lookups, what kind of failure it was ("not_found", "invalid_name").
type engineError struct {
	Status  int    `json:"-"`
	Message string `json:"error"`
	Kind    string `json:"kind"`
}

func (e *engineError) Error() string { return e.Message }

type engine struct {
	socket string
	cmd    *exec.Cmd
	client *http.Client
	exited chan error
}

// engineCommand is OLLAMA_STANDIN_ENGINE (a command line), or the image's venv.
func engineCommand() []string {
	if raw := strings.TrimSpace(os.Getenv("OLLAMA_STANDIN_ENGINE")); raw != "" {
		return strings.Fields(raw)
	}
	return []string{"/opt/standin/bin/python", "-m", "ollama_standin.service"}
}

func startEngine() (*engine, error) {
	dir, err := os.MkdirTemp("", "ollama-standin-")
	if err != nil {
		return nil, err
	}
	socket := filepath.Join(dir, "engine.sock")
	argv := append(engineCommand(), "--socket", socket)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting the engine %v: %w", argv, err)
	}
	e := &engine{socket: socket, cmd: cmd, exited: make(chan error, 1)}
	e.client = &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		MaxIdleConnsPerHost: 64,
	}}
	go func() { e.exited <- cmd.Wait() }()
	return e, e.waitReady(60 * time.Second)
}

func (e *engine) waitReady(limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		select {
		case err := <-e.exited:
			e.exited <- err
			return fmt.Errorf("the engine exited while starting: %v", err)
		default:
		}
		if err := e.call(context.Background(), http.MethodGet, "/health", nil, nil); err == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("the engine did not answer on %s within %s", e.socket, limit)
}

func (e *engine) stop() {
	if e.cmd.Process != nil {
		_ = e.cmd.Process.Signal(os.Interrupt)
		select {
		case <-e.exited:
		case <-time.After(5 * time.Second):
			_ = e.cmd.Process.Kill()
		}
	}
	_ = os.RemoveAll(filepath.Dir(e.socket))
}

// open sends a request and returns the response when the engine accepted it;
// a refusal comes back as *engineError with the body consumed.
func (e *engine) open(ctx context.Context, method, path string, body io.Reader) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, "http://engine"+path, body)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := e.client.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		refusal := &engineError{Status: resp.StatusCode}
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if json.Unmarshal(data, refusal) != nil || refusal.Message == "" {
			refusal.Message = strings.TrimSpace(string(data))
		}
		return nil, refusal
	}
	return resp, nil
}

// call sends JSON and decodes a JSON answer into out (when out is not nil).
func (e *engine) call(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		data, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(data)
	}
	resp, err := e.open(ctx, method, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		_, err = io.Copy(io.Discard, resp.Body)
		return err
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// stream sends JSON and calls each for every NDJSON line of the answer.
func (e *engine) stream(ctx context.Context, path string, in any, each func([]byte) error) error {
	data, err := json.Marshal(in)
	if err != nil {
		return err
	}
	resp, err := e.open(ctx, http.MethodPost, path, bytes.NewReader(data))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	lines := bufio.NewScanner(resp.Body)
	lines.Buffer(make([]byte, 64*1024), 64<<20) // a final line carries the whole context
	for lines.Scan() {
		if err := each(lines.Bytes()); err != nil {
			return err
		}
	}
	if err := lines.Err(); err != nil {
		return err
	}
	return nil
}

func isEngineError(err error, kind string) bool {
	var refusal *engineError
	return errors.As(err, &refusal) && refusal.Kind == kind
}
