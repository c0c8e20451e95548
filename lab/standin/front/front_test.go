package main

// Unit tests of the front's pure parts. Each expectation is Ollama's behaviour
// (v0.32.15 source, named beside the case); the HTTP behaviour is tested through
// a running stand-in in tests/standin/.

import (
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestKeepAliveNeedsAUnitInAString(t *testing.T) { // api/types.go Duration.UnmarshalJSON
	cases := map[string]time.Duration{
		`"5m"`: 5 * time.Minute, `"1h30m"`: 90 * time.Minute, `"0"`: 0, `0`: 0,
		`90`: 90 * time.Second, `2.5`: 2500 * time.Millisecond, `-1`: Forever,
		`"-1m"`: Forever, `"250ms"`: 250 * time.Millisecond,
	}
	for raw, want := range cases {
		var d Duration
		if err := json.Unmarshal([]byte(raw), &d); err != nil || d.Duration != want {
			t.Errorf("%s: got %v, %v; want %v", raw, d.Duration, err, want)
		}
	}
	refused := map[string]string{
		`"-1"`:   `time: missing unit in duration "-1"`,
		`"90"`:   `time: missing unit in duration "90"`,
		`"soon"`: `time: invalid duration "soon"`,
		`true`:   `Unsupported type: 'bool'`,
		`[1]`:    `Unsupported type: '[]interface {}'`,
	}
	for raw, want := range refused {
		var d Duration
		if err := json.Unmarshal([]byte(raw), &d); err == nil || err.Error() != want {
			t.Errorf("%s: got %v, want %q", raw, err, want)
		}
	}
}

func TestRequestKeysMatchCaseInsensitivelyAndBadUTF8IsReplaced(t *testing.T) { // encoding/json
	var req GenerateRequest
	body := []byte("{\"MODEL\":\"m\",\"Prompt\":\"a\xffb\",\"IMAGES\":[\"aGk=\"]}")
	if err := json.Unmarshal(body, &req); err != nil {
		t.Fatal(err)
	}
	if req.Model != "m" || req.Prompt != "a\uFFFDb" || string(req.Images[0]) != "hi" {
		t.Fatalf("decoded %+v", req)
	}
}

func TestRolesAreLowerCased(t *testing.T) { // api/types.go Message.UnmarshalJSON
	var m Message
	if err := json.Unmarshal([]byte(`{"role":"User","content":"x"}`), &m); err != nil || m.Role != "user" {
		t.Fatalf("got %+v, %v", m, err)
	}
}

func TestThinkTakesABooleanOrALevel(t *testing.T) { // api/types.go ThinkValue
	for raw, enabled := range map[string]bool{`true`: true, `false`: false, `"high"`: true, `"max"`: true} {
		var v ThinkValue
		if err := json.Unmarshal([]byte(raw), &v); err != nil || v.Enabled() != enabled {
			t.Errorf("%s: %v %v", raw, v.Enabled(), err)
		}
	}
	var v ThinkValue
	if err := json.Unmarshal([]byte(`"hard"`), &v); err == nil || !strings.Contains(err.Error(), "invalid think value") {
		t.Errorf("got %v", err)
	}
}

func TestOptionsLayerDefaultsThenModelThenRequest(t *testing.T) { // server/routes.go modelOptions
	opts, err := modelOptions(2048,
		map[string]any{"temperature": 0.1, "stop": []any{"<end>"}, "num_predict": 9.0},
		map[string]any{"temperature": 1.0, "num_predict": 5.7, "unknown": 1.0})
	if err != nil {
		t.Fatal(err)
	}
	if opts.NumCtx != 2048 || opts.Temperature != 1 || opts.NumPredict != 5 || opts.Stop[0] != "<end>" ||
		opts.TopK != 40 || opts.RepeatPenalty != 1.0 || opts.Seed != -1 {
		t.Fatalf("merged %+v", opts)
	}
}

func TestOptionsOfTheWrongTypeAreRefusedWithOllamasMessage(t *testing.T) { // api/types.go FromMap
	cases := map[string]string{
		"stop":        `option "stop" must be of type array`,
		"num_ctx":     `option "num_ctx" must be of type integer`,
		"temperature": `option "temperature" must be of type float32`,
		"use_mmap":    `option "use_mmap" must be of type boolean`,
	}
	for name, want := range cases {
		_, err := modelOptions(4096, map[string]any{name: "a string"}, nil)
		if err == nil || err.Error() != want {
			t.Errorf("%s: got %v, want %q", name, err, want)
		}
	}
	_, err := modelOptions(4096, nil, map[string]any{"stop": []any{"a", 1.0}})
	if err == nil || err.Error() != `option "stop" must be of an array of strings` {
		t.Errorf("got %v", err)
	}
}

func gemmaTemplate(t *testing.T) string {
	_, here, _, _ := runtime.Caller(0)
	text, err := os.ReadFile(filepath.Join(filepath.Dir(here), "..", "..", "..", "files", "ollama", "gemma-turns.gotmpl"))
	if err != nil {
		t.Fatal(err)
	}
	return string(text)
}

func TestTheGemmaTurnTemplateRendersAConversation(t *testing.T) { // template/template.go Execute
	got, err := render(gemmaTemplate(t), []Message{
		{Role: "system", Content: "S"}, {Role: "user", Content: "U"},
		{Role: "assistant", Content: "A"}, {Role: "user", Content: "V"},
	}, false)
	if err != nil {
		t.Fatal(err)
	}
	want := "<start_of_turn>user\nS<end_of_turn>\n<start_of_turn>user\nU<end_of_turn>\n" +
		"<start_of_turn>model\nA<end_of_turn>\n<start_of_turn>user\nV<end_of_turn>\n<start_of_turn>model\n"
	if got != want {
		t.Fatalf("got %q\nwant %q", got, want)
	}
}

func TestConsecutiveMessagesOfOneRoleAreJoined(t *testing.T) { // template/template.go collate
	got, err := render("{{ range .Messages }}[{{ .Role }}:{{ .Content }}]{{ end }}|{{ .System }}",
		[]Message{{Role: "system", Content: "a"}, {Role: "user", Content: "b"}, {Role: "user", Content: "c"}}, false)
	if err != nil || got != "[system:a][user:b\n\nc]|a" {
		t.Fatalf("got %q, %v", got, err)
	}
}

func TestALegacyTemplateIsCutWhereTheResponseGoes(t *testing.T) { // template/template.go Execute
	tmpl := "{{ if .System }}S:{{ .System }} {{ end }}U:{{ .Prompt }} A:{{ .Response }}<end> "
	got, err := render(tmpl, []Message{
		{Role: "system", Content: "s"}, {Role: "user", Content: "q1"},
		{Role: "assistant", Content: "r1"}, {Role: "user", Content: "q2"},
	}, false)
	if err != nil || got != "S:s U:q1 A:r1<end> U:q2 A:" {
		t.Fatalf("got %q, %v", got, err)
	}
	if got, _ := render("", []Message{{Role: "user", Content: "plain"}}, false); got != "plain" {
		t.Fatalf("no template: got %q", got)
	}
	if _, err := render("{{ .Prompt", nil, false); err == nil {
		t.Fatal("a broken template must be refused")
	}
}

func TestOllamaHostIsReadAsOllamaReadsIt(t *testing.T) { // envconfig/config.go Host
	cases := map[string]string{
		"": "127.0.0.1:11434", "0.0.0.0": "0.0.0.0:11434", "0.0.0.0:8080": "0.0.0.0:8080",
		"http://10.0.0.1": "10.0.0.1:80", "https://example.com": "example.com:443",
		"[::1]:9000": "[::1]:9000", "::1": "[::1]:11434", "127.0.0.1:99999": "127.0.0.1:11434",
	}
	for raw, want := range cases {
		if got := hostPort(raw); got != want {
			t.Errorf("%q: got %q, want %q", raw, got, want)
		}
	}
}

func TestTheEnvironmentKeepAliveAcceptsABareNumber(t *testing.T) { // envconfig/config.go KeepAlive
	for raw, want := range map[string]time.Duration{
		"": 5 * time.Minute, "-1": Forever, "10m": 10 * time.Minute, "30": 30 * time.Second, "junk": 5 * time.Minute,
	} {
		if got := keepAlive(raw); got != want {
			t.Errorf("%q: got %v, want %v", raw, got, want)
		}
	}
}

func TestOriginsAddOllamasLocalDefaults(t *testing.T) { // envconfig/config.go AllowedOrigins
	got := allowedOrigins("https://chat.site.internal")
	if got[0] != "https://chat.site.internal" || !contains(got, "http://localhost:*") || !contains(got, "app://*") {
		t.Fatalf("got %v", got)
	}
}

func TestFormatIsJSONASchemaOrNothing(t *testing.T) { // llm/llama_server.go
	for _, ok := range []string{``, `null`, `""`, `"json"`, `{"type":"object"}`} {
		if err := checkFormat(json.RawMessage(ok)); err != nil {
			t.Errorf("%s refused: %v", ok, err)
		}
	}
	if err := checkFormat(json.RawMessage(`"yaml"`)); err == nil || !strings.HasPrefix(err.Error(), "invalid format") {
		t.Errorf("got %v", err)
	}
}

func contains(list []string, item string) bool {
	for _, x := range list {
		if x == item {
			return true
		}
	}
	return false
}
