package main

// The request and response shapes of Ollama's native API, as Ollama's api
// package declares them (api/types.go, v0.32.15): decoding a request into these
// typed structs with encoding/json is what gives the stand-in Ollama's parsing —
// keys matched case-insensitively, invalid UTF-8 replaced, a value of the wrong
// JSON type refused with Go's own message, unknown keys ignored — and encoding
// responses from them gives Ollama's field order, omitted zero metrics and
// RFC 3339 times with nanoseconds.

import (
	"encoding/json"
	"fmt"
	"math"
	"time"
)

// ImageData is raw image bytes; JSON carries them as base64 (invalid base64 is a 400).
type ImageData []byte

type GenerateRequest struct {
	Model       string          `json:"model"`
	Prompt      string          `json:"prompt"`
	Suffix      string          `json:"suffix"`
	System      string          `json:"system"`
	Template    string          `json:"template"`
	Context     []int           `json:"context,omitempty"`
	Stream      *bool           `json:"stream,omitempty"`
	Raw         bool            `json:"raw,omitempty"`
	Format      json.RawMessage `json:"format,omitempty"`
	KeepAlive   *Duration       `json:"keep_alive,omitempty"`
	Images      []ImageData     `json:"images,omitempty"`
	Options     map[string]any  `json:"options"`
	Think       *ThinkValue     `json:"think,omitempty"`
	Truncate    *bool           `json:"truncate,omitempty"`
	Shift       *bool           `json:"shift,omitempty"`
	Logprobs    bool            `json:"logprobs,omitempty"`
	TopLogprobs int             `json:"top_logprobs,omitempty"`
}

type ChatRequest struct {
	Model       string          `json:"model"`
	Messages    []Message       `json:"messages"`
	Stream      *bool           `json:"stream,omitempty"`
	Format      json.RawMessage `json:"format,omitempty"`
	KeepAlive   *Duration       `json:"keep_alive,omitempty"`
	Tools       []any           `json:"tools,omitempty"`
	Options     map[string]any  `json:"options"`
	Think       *ThinkValue     `json:"think,omitempty"`
	Truncate    *bool           `json:"truncate,omitempty"`
	Shift       *bool           `json:"shift,omitempty"`
	Logprobs    bool            `json:"logprobs,omitempty"`
	TopLogprobs int             `json:"top_logprobs,omitempty"`
}

type Message struct {
	Role       string      `json:"role"`
	Content    string      `json:"content"`
	Thinking   string      `json:"thinking,omitempty"`
	Images     []ImageData `json:"images,omitempty"`
	ToolCalls  []any       `json:"tool_calls,omitempty"`
	ToolName   string      `json:"tool_name,omitempty"`
	ToolCallID string      `json:"tool_call_id,omitempty"`
}

// UnmarshalJSON lower-cases the role, as Ollama's Message does ("User" is "user").
func (m *Message) UnmarshalJSON(b []byte) error {
	type plain Message
	var p plain
	if err := json.Unmarshal(b, &p); err != nil {
		return err
	}
	*m = Message(p)
	m.Role = lower(m.Role)
	return nil
}

type EmbedRequest struct {
	Model     string         `json:"model"`
	Input     any            `json:"input"`
	KeepAlive *Duration      `json:"keep_alive,omitempty"`
	Truncate  *bool          `json:"truncate,omitempty"`
	Options   map[string]any `json:"options"`
}

type CreateRequest struct {
	Model      string            `json:"model"`
	Stream     *bool             `json:"stream,omitempty"`
	Quantize   string            `json:"quantize,omitempty"`
	From       string            `json:"from,omitempty"`
	Files      map[string]string `json:"files,omitempty"`
	Adapters   map[string]string `json:"adapters,omitempty"`
	Template   string            `json:"template,omitempty"`
	License    any               `json:"license,omitempty"`
	System     string            `json:"system,omitempty"`
	Parameters map[string]any    `json:"parameters,omitempty"`
	Messages   []Message         `json:"messages,omitempty"`
	Name       string            `json:"name"`
}

type DeleteRequest struct {
	Model string `json:"model"`
	Name  string `json:"name"`
}

type ShowRequest struct {
	Model   string         `json:"model"`
	System  string         `json:"system"`
	Verbose bool           `json:"verbose"`
	Options map[string]any `json:"options"`
	Name    string         `json:"name"`
}

type CopyRequest struct {
	Source      string `json:"source"`
	Destination string `json:"destination"`
}

type PullRequest struct {
	Model    string `json:"model"`
	Insecure bool   `json:"insecure,omitempty"`
	Stream   *bool  `json:"stream,omitempty"`
	Name     string `json:"name"`
}

type ProgressResponse struct {
	Status    string `json:"status"`
	Digest    string `json:"digest,omitempty"`
	Total     int64  `json:"total,omitempty"`
	Completed int64  `json:"completed,omitempty"`
}

type Metrics struct {
	TotalDuration      time.Duration `json:"total_duration,omitempty"`
	LoadDuration       time.Duration `json:"load_duration,omitempty"`
	PromptEvalCount    int           `json:"prompt_eval_count,omitempty"`
	PromptEvalDuration time.Duration `json:"prompt_eval_duration,omitempty"`
	EvalCount          int           `json:"eval_count,omitempty"`
	EvalDuration       time.Duration `json:"eval_duration,omitempty"`
}

type GenerateResponse struct {
	Model      string    `json:"model"`
	CreatedAt  time.Time `json:"created_at"`
	Response   string    `json:"response"`
	Thinking   string    `json:"thinking,omitempty"`
	Done       bool      `json:"done"`
	DoneReason string    `json:"done_reason,omitempty"`
	Context    []int     `json:"context,omitempty"`
	Metrics
}

type ChatResponse struct {
	Model      string    `json:"model"`
	CreatedAt  time.Time `json:"created_at"`
	Message    Message   `json:"message"`
	Done       bool      `json:"done"`
	DoneReason string    `json:"done_reason,omitempty"`
	Metrics
}

type ModelDetails struct {
	ParentModel       string   `json:"parent_model"`
	Format            string   `json:"format"`
	Family            string   `json:"family"`
	Families          []string `json:"families"`
	ParameterSize     string   `json:"parameter_size"`
	QuantizationLevel string   `json:"quantization_level"`
}

type ListModelResponse struct {
	Name         string       `json:"name"`
	Model        string       `json:"model"`
	ModifiedAt   time.Time    `json:"modified_at"`
	Size         int64        `json:"size"`
	Digest       string       `json:"digest"`
	Details      ModelDetails `json:"details,omitempty"`
	Capabilities []string     `json:"capabilities,omitempty"`
}

type ListResponse struct {
	Models []ListModelResponse `json:"models"`
}

type ProcessModelResponse struct {
	Name          string       `json:"name"`
	Model         string       `json:"model"`
	Size          int64        `json:"size"`
	Digest        string       `json:"digest"`
	Details       ModelDetails `json:"details,omitempty"`
	ExpiresAt     time.Time    `json:"expires_at"`
	SizeVRAM      int64        `json:"size_vram"`
	ContextLength int          `json:"context_length"`
}

type ProcessResponse struct {
	Models []ProcessModelResponse `json:"models"`
}

type Tensor struct {
	Name  string   `json:"name"`
	Type  string   `json:"type"`
	Shape []uint64 `json:"shape"`
}

type ShowResponse struct {
	License       string         `json:"license,omitempty"`
	Modelfile     string         `json:"modelfile,omitempty"`
	Parameters    string         `json:"parameters,omitempty"`
	Template      string         `json:"template,omitempty"`
	System        string         `json:"system,omitempty"`
	Details       ModelDetails   `json:"details,omitempty"`
	ModelInfo     map[string]any `json:"model_info"`
	ProjectorInfo map[string]any `json:"projector_info,omitempty"`
	Tensors       []Tensor       `json:"tensors,omitempty"`
	Capabilities  []string       `json:"capabilities,omitempty"`
	ModifiedAt    time.Time      `json:"modified_at,omitempty"`
}

// Duration is keep_alive: a JSON number of seconds, or a string Go's
// time.ParseDuration accepts ("5m", "-1m", "0") — so "-1" or "90" without a
// unit is refused ("time: missing unit in duration"). Negative means forever.
type Duration struct {
	time.Duration
}

// Forever is how Ollama stores a negative keep_alive.
const Forever = time.Duration(math.MaxInt64)

func (d *Duration) UnmarshalJSON(b []byte) error {
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	switch t := v.(type) {
	case float64:
		if t < 0 {
			d.Duration = Forever
		} else {
			d.Duration = time.Duration(t * float64(time.Second))
		}
	case string:
		parsed, err := time.ParseDuration(t)
		if err != nil {
			return err
		}
		if parsed < 0 {
			parsed = Forever
		}
		d.Duration = parsed
	default:
		return fmt.Errorf("Unsupported type: '%T'", v)
	}
	return nil
}

// ThinkValue is think: a boolean or one of the levels high, medium, low, max.
type ThinkValue struct {
	Value any
}

func (t *ThinkValue) UnmarshalJSON(data []byte) error {
	var b bool
	if err := json.Unmarshal(data, &b); err == nil {
		t.Value = b
		return nil
	}
	var s string
	if err := json.Unmarshal(data, &s); err == nil {
		switch s {
		case "high", "medium", "low", "max":
			t.Value = s
			return nil
		}
		return fmt.Errorf("invalid think value: %q (must be \"high\", \"medium\", \"low\", \"max\", true, or false)", s)
	}
	return fmt.Errorf("think must be a boolean or string (\"high\", \"medium\", \"low\", \"max\", true, or false)")
}

// Enabled says whether the request asks for thinking in any form.
func (t *ThinkValue) Enabled() bool {
	if t == nil {
		return false
	}
	switch v := t.Value.(type) {
	case bool:
		return v
	case string:
		return v != ""
	}
	return false
}
