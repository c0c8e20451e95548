package main

// Model options as Ollama applies them (api/types.go Options, DefaultOptions
// and FromMap, server/routes.go modelOptions): Ollama's defaults, then the
// model's stored parameters, then the request's options. The type of each
// value is checked when a request uses it, not when /api/create stores it, so a
// model created with `stop: "<end_of_turn>"` (a string, not an array) makes every
// request to it fail with 500 `option "stop" must be of type array`. Unknown
// names are ignored (Ollama logs a warning).

import (
	"fmt"
	"log"
)

// Options is what the engine gets: every field, zero values included (a
// temperature of 0 means greedy, so nothing here may be omitted).
type Options struct {
	NumCtx           int      `json:"num_ctx"`
	NumBatch         int      `json:"num_batch"`
	NumGPU           int      `json:"num_gpu"`
	MainGPU          *int     `json:"main_gpu"`
	UseMMap          *bool    `json:"use_mmap"`
	NumThread        int      `json:"num_thread"`
	DraftNumPredict  int      `json:"draft_num_predict"`
	NumKeep          int      `json:"num_keep"`
	Seed             int      `json:"seed"`
	NumPredict       int      `json:"num_predict"`
	TopK             int      `json:"top_k"`
	TopP             float32  `json:"top_p"`
	MinP             float32  `json:"min_p"`
	TypicalP         float32  `json:"typical_p"`
	RepeatLastN      int      `json:"repeat_last_n"`
	Temperature      float32  `json:"temperature"`
	RepeatPenalty    float32  `json:"repeat_penalty"`
	PresencePenalty  float32  `json:"presence_penalty"`
	FrequencyPenalty float32  `json:"frequency_penalty"`
	Stop             []string `json:"stop"`
}

// defaultOptions are Ollama's (v0.32.15); numCtx comes from OLLAMA_CONTEXT_LENGTH.
func defaultOptions(numCtx int) Options {
	return Options{
		NumPredict: -1, NumKeep: 4, Temperature: 0.8, TopK: 40, TopP: 0.9,
		TypicalP: 1.0, RepeatLastN: 64, RepeatPenalty: 1.0, Seed: -1,
		NumCtx: numCtx, NumBatch: 512, NumGPU: -1, DraftNumPredict: 4,
	}
}

// setter applies one JSON value to one option, or says which type it wanted.
type setter func(o *Options, v any) error

func intOption(field func(*Options) *int) setter {
	return func(o *Options, v any) error {
		n, ok := v.(float64) // encoding/json decodes every number as float64
		if !ok {
			return errType("integer")
		}
		*field(o) = int(n)
		return nil
	}
}

func floatOption(field func(*Options) *float32) setter {
	return func(o *Options, v any) error {
		n, ok := v.(float64)
		if !ok {
			return errType("float32")
		}
		*field(o) = float32(n)
		return nil
	}
}

type errType string

func (e errType) Error() string { return string(e) }

var optionSetters = map[string]setter{
	"num_ctx":           intOption(func(o *Options) *int { return &o.NumCtx }),
	"num_batch":         intOption(func(o *Options) *int { return &o.NumBatch }),
	"num_gpu":           intOption(func(o *Options) *int { return &o.NumGPU }),
	"num_thread":        intOption(func(o *Options) *int { return &o.NumThread }),
	"draft_num_predict": intOption(func(o *Options) *int { return &o.DraftNumPredict }),
	"num_keep":          intOption(func(o *Options) *int { return &o.NumKeep }),
	"seed":              intOption(func(o *Options) *int { return &o.Seed }),
	"num_predict":       intOption(func(o *Options) *int { return &o.NumPredict }),
	"top_k":             intOption(func(o *Options) *int { return &o.TopK }),
	"repeat_last_n":     intOption(func(o *Options) *int { return &o.RepeatLastN }),
	"top_p":             floatOption(func(o *Options) *float32 { return &o.TopP }),
	"min_p":             floatOption(func(o *Options) *float32 { return &o.MinP }),
	"typical_p":         floatOption(func(o *Options) *float32 { return &o.TypicalP }),
	"temperature":       floatOption(func(o *Options) *float32 { return &o.Temperature }),
	"repeat_penalty":    floatOption(func(o *Options) *float32 { return &o.RepeatPenalty }),
	"presence_penalty":  floatOption(func(o *Options) *float32 { return &o.PresencePenalty }),
	"frequency_penalty": floatOption(func(o *Options) *float32 { return &o.FrequencyPenalty }),
	"main_gpu": func(o *Options, v any) error {
		n, ok := v.(float64)
		if !ok {
			return errType("integer")
		}
		i := int(n)
		o.MainGPU = &i
		return nil
	},
	"use_mmap": func(o *Options, v any) error {
		b, ok := v.(bool)
		if !ok {
			return errType("boolean")
		}
		o.UseMMap = &b
		return nil
	},
	"stop": func(o *Options, v any) error {
		items, ok := v.([]any)
		if !ok {
			return errType("array")
		}
		stop := make([]string, len(items))
		for i, item := range items {
			s, ok := item.(string)
			if !ok {
				return fmt.Errorf("an array of strings")
			}
			stop[i] = s
		}
		o.Stop = stop
		return nil
	},
}

// apply layers one map of options over o with Ollama's messages for a wrong type.
func (o *Options) apply(values map[string]any) error {
	for name, value := range values {
		set, known := optionSetters[name]
		if !known {
			log.Printf("WARN invalid option provided option=%s", name)
			continue
		}
		if value == nil {
			continue
		}
		if err := set(o, value); err != nil {
			if kind, ok := err.(errType); ok {
				return fmt.Errorf("option %q must be of type %s", name, string(kind))
			}
			return fmt.Errorf("option %q must be of %s", name, err.Error())
		}
	}
	return nil
}

// modelOptions merges defaults, the model's stored parameters and the request's options.
func modelOptions(numCtx int, stored, requested map[string]any) (Options, error) {
	opts := defaultOptions(numCtx)
	if err := opts.apply(stored); err != nil {
		return Options{}, err
	}
	if err := opts.apply(requested); err != nil {
		return Options{}, err
	}
	return opts, nil
}
