package main

// /api/generate and /api/chat: the checks Ollama's GenerateHandler and
// ChatHandler make, in their order, then the prompt rendered from the model's
// Go template and the engine's pieces answered as Ollama's NDJSON chunks (or
// one object with stream: false).

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/gin-gonic/gin"
)

// completion is what the engine runs: a rendered prompt and checked options.
type completion struct {
	Model       string          `json:"model"`
	Prompt      string          `json:"prompt"`
	Context     []int           `json:"context,omitempty"`
	Images      []ImageData     `json:"images,omitempty"`
	Options     Options         `json:"options"`
	KeepAlive   *float64        `json:"keep_alive"` // seconds; nil = forever
	Format      json.RawMessage `json:"format,omitempty"`
	WantContext bool            `json:"want_context"`
}

// piece is one line of the engine's answer: text, or the final counts, or an error.
type piece struct {
	Content            string `json:"content"`
	Done               bool   `json:"done"`
	DoneReason         string `json:"done_reason"`
	PromptEvalCount    int    `json:"prompt_eval_count"`
	PromptEvalDuration int64  `json:"prompt_eval_duration"`
	EvalCount          int    `json:"eval_count"`
	EvalDuration       int64  `json:"eval_duration"`
	LoadDuration       int64  `json:"load_duration"`
	Context            []int  `json:"context"`
	Error              string `json:"error"`
}

// keepAliveSeconds is the request's keep_alive, else OLLAMA_KEEP_ALIVE; nil = forever.
func (s *server) keepAliveSeconds(requested *Duration) *float64 {
	d := s.settings.keepAlive
	if requested != nil {
		d = requested.Duration
	}
	if d == Forever {
		return nil
	}
	seconds := d.Seconds()
	return &seconds
}

func (s *server) numCtx() int {
	if s.settings.contextLength > 0 {
		return s.settings.contextLength
	}
	return 4096 // Ollama's automatic choice with no GPU memory
}

// checkFormat accepts what Ollama's runner accepts: "json", a JSON object (a
// schema), or nothing.
func checkFormat(format json.RawMessage) error {
	trimmed := bytes.TrimSpace(format)
	switch {
	case len(trimmed) == 0, string(trimmed) == "null", string(trimmed) == `""`:
		return nil
	case string(trimmed) == `"json"`, trimmed[0] == '{':
		return nil
	}
	return fmt.Errorf("invalid format: %q; expected \"json\" or a valid JSON Schema object", string(format))
}

// thinkRefused answers 400 when thinking is asked of a model that cannot think.
func thinkRefused(c *gin.Context, m *modelInfo, model string, think *ThinkValue) bool {
	if !m.has("thinking") && think.Enabled() {
		fail(c, http.StatusBadRequest, fmt.Sprintf("%q does not support thinking", model))
		return true
	}
	return false
}

// missingCapability is Ollama's CheckCapabilities error for what the model lacks.
func missingCapability(m *modelInfo, wanted ...string) string {
	var missing []string
	for _, capability := range wanted {
		if !m.has(capability) {
			missing = append(missing, capability)
		}
	}
	if len(missing) == 0 {
		return ""
	}
	return fmt.Sprintf("%s does not support %s", m.FullName, strings.Join(missing, "\n"))
}

// findModel looks a model up and answers Ollama's refusal when it cannot.
func (s *server) findModel(c *gin.Context, raw string) *modelInfo {
	m, err := s.lookup(c, raw)
	switch {
	case isEngineError(err, "invalid_name"):
		fail(c, http.StatusBadRequest, "invalid model name")
	case isEngineError(err, "not_found"):
		fail(c, http.StatusNotFound, fmt.Sprintf("model '%s' not found", raw))
	case err != nil:
		engineFailure(c, err)
	default:
		return m
	}
	return nil
}

func (s *server) generate(c *gin.Context) {
	started := time.Now()
	var req GenerateRequest
	if !bind(c, &req) {
		return
	}
	if req.TopLogprobs < 0 || req.TopLogprobs > 20 {
		fail(c, http.StatusBadRequest, "top_logprobs must be between 0 and 20")
		return
	}
	if strings.TrimSpace(req.Model) == "" { // Ollama's fallback for a missing name here
		fail(c, http.StatusNotFound, fmt.Sprintf("model '%s' not found", req.Model))
		return
	}
	m := s.findModel(c, req.Model)
	if m == nil {
		return
	}
	if req.Prompt == "" && req.KeepAlive != nil && req.KeepAlive.Duration == 0 {
		s.unload(c, m)
		c.JSON(http.StatusOK, GenerateResponse{Model: req.Model, CreatedAt: time.Now().UTC(),
			Done: true, DoneReason: "unload"})
		return
	}
	if req.Raw && (req.Template != "" || req.System != "" || len(req.Context) > 0) {
		fail(c, http.StatusBadRequest, "raw mode does not support template, system, or context")
		return
	}
	if thinkRefused(c, m, req.Model, req.Think) {
		return
	}
	if !m.has("completion") {
		fail(c, http.StatusBadRequest, fmt.Sprintf("%q does not support generate", req.Model))
		return
	}
	wanted := []string{"completion"}
	if req.Suffix != "" {
		wanted = append(wanted, "insert")
	}
	if missing := missingCapability(m, wanted...); missing != "" {
		fail(c, http.StatusBadRequest, missing)
		return
	}
	opts, err := modelOptions(s.numCtx(), m.Params, req.Options)
	if err != nil {
		fail(c, http.StatusInternalServerError, err.Error())
		return
	}
	job := completion{Model: m.Name, Context: req.Context, Images: req.Images, Options: opts,
		KeepAlive: s.keepAliveSeconds(req.KeepAlive), Format: req.Format, WantContext: !req.Raw}
	if req.Prompt == "" {
		if s.load(c, job) {
			c.JSON(http.StatusOK, GenerateResponse{Model: req.Model, CreatedAt: time.Now().UTC(),
				Done: true, DoneReason: "load"})
		}
		return
	}
	job.Prompt = req.Prompt
	if !req.Raw {
		text := m.Template
		if req.Template != "" {
			text = req.Template
		}
		system := req.System
		if system == "" {
			system = m.System
		}
		var msgs []Message
		if system != "" {
			msgs = append(msgs, Message{Role: "system", Content: system})
		}
		msgs = append(msgs, Message{Role: "user", Content: req.Prompt})
		if job.Prompt, err = render(text, msgs, req.Think.Enabled()); err != nil {
			fail(c, http.StatusInternalServerError, err.Error())
			return
		}
	}
	s.complete(c, job, req.Stream, started, func(p piece, final bool) any {
		return GenerateResponse{Model: req.Model, CreatedAt: time.Now().UTC(), Response: p.Content,
			Done: final, DoneReason: p.DoneReason, Context: p.Context, Metrics: metricsOf(p, started, final)}
	})
}

func (s *server) chat(c *gin.Context) {
	started := time.Now()
	var req ChatRequest
	if !bind(c, &req) {
		return
	}
	if req.TopLogprobs < 0 || req.TopLogprobs > 20 {
		fail(c, http.StatusBadRequest, "top_logprobs must be between 0 and 20")
		return
	}
	if strings.TrimSpace(req.Model) == "" {
		fail(c, http.StatusBadRequest, "model is required")
		return
	}
	m := s.findModel(c, req.Model)
	if m == nil {
		return
	}
	if len(req.Messages) == 0 && req.KeepAlive != nil && req.KeepAlive.Duration == 0 {
		s.unload(c, m)
		c.JSON(http.StatusOK, ChatResponse{Model: req.Model, CreatedAt: time.Now().UTC(),
			Message: Message{Role: "assistant"}, Done: true, DoneReason: "unload"})
		return
	}
	if thinkRefused(c, m, req.Model, req.Think) {
		return
	}
	if !m.has("completion") {
		fail(c, http.StatusBadRequest, fmt.Sprintf("%q does not support chat", req.Model))
		return
	}
	wanted := []string{"completion"}
	if len(req.Tools) > 0 {
		wanted = append(wanted, "tools")
	}
	if missing := missingCapability(m, wanted...); missing != "" {
		fail(c, http.StatusBadRequest, missing)
		return
	}
	opts, err := modelOptions(s.numCtx(), m.Params, req.Options)
	if err != nil {
		fail(c, http.StatusInternalServerError, err.Error())
		return
	}
	job := completion{Model: m.Name, Options: opts, KeepAlive: s.keepAliveSeconds(req.KeepAlive),
		Format: req.Format}
	if len(req.Messages) == 0 {
		if s.load(c, job) {
			c.JSON(http.StatusOK, ChatResponse{Model: req.Model, CreatedAt: time.Now().UTC(),
				Message: Message{Role: "assistant"}, Done: true, DoneReason: "load"})
		}
		return
	}
	msgs := req.Messages
	if msgs[0].Role != "system" && m.System != "" {
		msgs = append([]Message{{Role: "system", Content: m.System}}, msgs...)
	}
	for _, msg := range msgs {
		job.Images = append(job.Images, msg.Images...)
	}
	if job.Prompt, err = render(m.Template, msgs, req.Think.Enabled()); err != nil {
		fail(c, http.StatusInternalServerError, err.Error())
		return
	}
	s.complete(c, job, req.Stream, started, func(p piece, final bool) any {
		return ChatResponse{Model: req.Model, CreatedAt: time.Now().UTC(),
			Message: Message{Role: "assistant", Content: p.Content}, Done: final,
			DoneReason: p.DoneReason, Metrics: metricsOf(p, started, final)}
	})
}

func (s *server) embed(c *gin.Context) {
	var req EmbedRequest
	if !bind(c, &req) {
		return
	}
	if m := s.findModel(c, req.Model); m != nil {
		fail(c, http.StatusNotImplemented, "embeddings are not implemented by the Ollama stand-in")
	}
}

func render(text string, msgs []Message, think bool) (string, error) {
	if text == "" {
		text = "{{ .Prompt }}"
	}
	tmpl, err := parseTemplate(text)
	if err != nil {
		return "", err
	}
	return tmpl.execute(msgs, think)
}

func metricsOf(p piece, started time.Time, final bool) Metrics {
	if !final {
		return Metrics{}
	}
	return Metrics{
		TotalDuration: time.Since(started), LoadDuration: time.Duration(p.LoadDuration),
		PromptEvalCount: p.PromptEvalCount, PromptEvalDuration: time.Duration(p.PromptEvalDuration),
		EvalCount: p.EvalCount, EvalDuration: time.Duration(p.EvalDuration),
	}
}

func (s *server) unload(c *gin.Context, m *modelInfo) {
	_ = s.engine.call(c.Request.Context(), http.MethodPost, "/unload", gin.H{"model": m.Name}, nil)
}

// load schedules the model without a prompt; false when it answered a failure.
func (s *server) load(c *gin.Context, job completion) bool {
	if err := s.engine.call(c.Request.Context(), http.MethodPost, "/load", job, nil); err != nil {
		engineFailure(c, err)
		return false
	}
	return true
}

// complete runs the job on the engine and answers Ollama's way: NDJSON chunks,
// or one object holding the whole text when stream is false.
func (s *server) complete(c *gin.Context, job completion, stream *bool, started time.Time,
	shape func(piece, bool) any) {
	if err := checkFormat(job.Format); err != nil {
		fail(c, http.StatusInternalServerError, err.Error())
		return
	}
	whole := stream != nil && !*stream
	var text strings.Builder
	err := s.engine.stream(c.Request.Context(), "/completion", job, func(line []byte) error {
		var p piece
		if err := json.Unmarshal(line, &p); err != nil {
			return err
		}
		if p.Error != "" {
			return fmt.Errorf("%s", p.Error)
		}
		if whole {
			text.WriteString(p.Content)
			if p.Done {
				p.Content = text.String()
				c.JSON(http.StatusOK, shape(p, true))
			}
			return nil
		}
		writeLine(c, shape(p, p.Done))
		return nil
	})
	if err != nil && c.Request.Context().Err() == nil {
		endWithError(c, err)
	}
}
