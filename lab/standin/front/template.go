package main

// Prompt templates are Go templates, executed as Ollama executes them
// (template/template.go, v0.32.15): a template that uses .Messages gets the
// collated conversation (consecutive messages of one role joined by a blank
// line, every system message also joined into .System); an older template
// that knows only .System, .Prompt and .Response is executed once per turn,
// and the last turn is cut where .Response would be written, so the model
// continues from there.

import (
	"bytes"
	"encoding/json"
	"strings"
	"text/template"
	"text/template/parse"
	"time"
)

var templateFuncs = template.FuncMap{
	"json": func(v any) string {
		b, _ := json.Marshal(v)
		return string(b)
	},
	"currentDate": func(args ...string) string {
		return time.Now().Format("2006-01-02")
	},
}

type promptTemplate struct {
	tmpl     *template.Template
	messages bool // the template ranges over .Messages
}

func parseTemplate(text string) (*promptTemplate, error) {
	tmpl, err := template.New("").Option("missingkey=zero").Funcs(templateFuncs).Parse(text)
	if err != nil {
		return nil, err
	}
	return &promptTemplate{tmpl: tmpl, messages: usesField(tmpl.Tree.Root, "Messages")}, nil
}

// usesField says whether any node of the tree reads the named field.
func usesField(node parse.Node, name string) bool {
	found := false
	var walk func(parse.Node)
	walk = func(n parse.Node) {
		if n == nil || found {
			return
		}
		switch t := n.(type) {
		case *parse.ListNode:
			if t == nil {
				return
			}
			for _, c := range t.Nodes {
				walk(c)
			}
		case *parse.ActionNode:
			walk(t.Pipe)
		case *parse.PipeNode:
			if t == nil {
				return
			}
			for _, cmd := range t.Cmds {
				walk(cmd)
			}
		case *parse.CommandNode:
			for _, arg := range t.Args {
				walk(arg)
			}
		case *parse.FieldNode:
			for _, ident := range t.Ident {
				if ident == name {
					found = true
				}
			}
		case *parse.VariableNode:
			for _, ident := range t.Ident {
				if ident == name {
					found = true
				}
			}
		case *parse.IfNode:
			walk(t.Pipe)
			walk(t.List)
			walk(t.ElseList)
		case *parse.RangeNode:
			walk(t.Pipe)
			walk(t.List)
			walk(t.ElseList)
		case *parse.WithNode:
			walk(t.Pipe)
			walk(t.List)
			walk(t.ElseList)
		case *parse.TemplateNode:
			walk(t.Pipe)
		}
	}
	walk(node)
	return found
}

// collate joins consecutive messages of one role and collects the system text.
func collate(msgs []Message) (string, []Message) {
	var system []string
	var out []Message
	for _, m := range msgs {
		if m.Role == "system" {
			system = append(system, m.Content)
		}
		if len(out) > 0 && out[len(out)-1].Role == m.Role && m.Role != "tool" {
			out[len(out)-1].Content += "\n\n" + m.Content
			continue
		}
		out = append(out, m)
	}
	return strings.Join(system, "\n\n"), out
}

// responseMark stands where .Response goes in the last legacy turn; the text is cut there.
const responseMark = "\x00ollama-standin-response\x00"

func (p *promptTemplate) execute(msgs []Message, think bool) (string, error) {
	system, collated := collate(msgs)
	var b bytes.Buffer
	if p.messages {
		err := p.tmpl.Execute(&b, map[string]any{
			"System": system, "Messages": collated, "Response": "", "Think": think,
		})
		return b.String(), err
	}
	var turnSystem, prompt, response string
	flush := func(value string) error {
		err := p.tmpl.Execute(&b, map[string]any{
			"System": turnSystem, "Prompt": prompt, "Response": value, "Think": think,
		})
		turnSystem, prompt, response = "", "", ""
		return err
	}
	for _, m := range collated {
		switch m.Role {
		case "system":
			if prompt != "" || response != "" {
				if err := flush(response); err != nil {
					return "", err
				}
			}
			turnSystem = m.Content
		case "user":
			if response != "" {
				if err := flush(response); err != nil {
					return "", err
				}
			}
			prompt = m.Content
		case "assistant":
			response = m.Content
		}
	}
	start := b.Len()
	last := response + responseMark
	if err := flush(last); err != nil {
		return "", err
	}
	text := b.String()
	if cut := strings.Index(text[start:], responseMark); cut >= 0 {
		text = text[:start+cut]
	}
	return text, nil
}
