// Command gotemplate renders an Ollama Modelfile TEMPLATE exactly as Ollama does, so tests can
// prove the packaged template produces the training text byte for byte. Standard library only.
//
// It mirrors, in its own code, three pieces of Ollama (github.com/ollama/ollama):
//   - parser/parser.go: how `ollama create` reads a Modelfile (triple quotes, trimming,
//     dropped non-printable runes);
//   - template/template.go: Parse (text/template with missingkey=zero, a `json` func, and
//     {{ .Response }} appended to templates that name neither .Messages nor .Response) and
//     Execute (FIM values when both .Prompt and .Suffix are set, else .System/.Messages with
//     consecutive same-role messages merged);
//   - server/routes.go: how /api/generate (suffix, system, the Modelfile SYSTEM) and /api/chat
//     (the Modelfile SYSTEM prepended unless the first message is a system one) build values.
//
// Context-window truncation and templates without .Messages (Ollama's legacy per-turn path) are
// not emulated; the latter is reported as an error.
//
// Input on stdin: one JSON request or an array of them. Output: one JSON result per request.
//
//	{"modelfile": "FROM ...\nTEMPLATE ..."}            -> {"commands": [{"name", "args"}]}
//	{"template": T, "system": S, "generate": {"prompt", "suffix", "system"}} -> {"prompt": ...}
//	{"template": T, "system": S, "chat": {"messages": [{"role", "content"}]}} -> {"prompt": ...}
//	{"template": T, "values": {"messages": [...], "prompt": "", "suffix": ""}} -> {"prompt": ...}
//
// A failing request gives {"error": "..."}; the exit status is 0 unless stdin is not JSON.
//
// Build: go build -o gotemplate tests/gotemplate/main.go
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/template"
	"text/template/parse"
)

// Message has the fields of Ollama's api.Message that a text template can use.
type Message struct {
	Role     string   `json:"role"`
	Content  string   `json:"content"`
	Thinking string   `json:"thinking,omitempty"`
	Images   []string `json:"images,omitempty"`
}

type generateRequest struct {
	Prompt string `json:"prompt"`
	Suffix string `json:"suffix"`
	System string `json:"system"`
}

type chatRequest struct {
	Messages []Message `json:"messages"`
}

type values struct {
	Messages []Message `json:"messages"`
	Prompt   string    `json:"prompt"`
	Suffix   string    `json:"suffix"`
}

type request struct {
	Modelfile *string          `json:"modelfile"`
	Template  string           `json:"template"`
	System    string           `json:"system"` // the Modelfile's SYSTEM
	Generate  *generateRequest `json:"generate"`
	Chat      *chatRequest     `json:"chat"`
	Values    *values          `json:"values"`
}

type command struct {
	Name string `json:"name"`
	Args string `json:"args"`
}

type result struct {
	Prompt   *string   `json:"prompt,omitempty"`
	Commands []command `json:"commands,omitempty"`
	Error    string    `json:"error,omitempty"`
}

// ---- Modelfile parsing (parser/parser.go) -----------------------------------------------

var modelfileCommands = map[string]bool{
	"from": true, "license": true, "template": true, "system": true, "adapter": true,
	"draft": true, "renderer": true, "parser": true, "parameter": true, "message": true,
	"requires": true,
}

func isLetter(r rune) bool  { return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' }
func isDigit(r rune) bool   { return r >= '0' && r <= '9' }
func isBlank(r rune) bool   { return r == ' ' || r == '\t' }
func isNewline(r rune) bool { return r == '\r' || r == '\n' }

// unquoteValue strips """...""" or "..." the way Ollama does; false while a quote is open.
func unquoteValue(s string) (string, bool) {
	if strings.HasPrefix(s, `"""`) {
		if len(s) >= 6 && strings.HasSuffix(s, `"""`) {
			return s[3 : len(s)-3], true
		}
		return "", false
	}
	if strings.HasPrefix(s, `"`) {
		if len(s) >= 2 && strings.HasSuffix(s, `"`) {
			return s[1 : len(s)-1], true
		}
		return "", false
	}
	return s, true
}

func parseModelfile(text string) ([]command, error) {
	const (
		atLineStart = iota
		inName
		inParameterName
		inMessageRole
		inValue
		inComment
	)
	state := atLineStart
	line := 1
	var buf strings.Builder
	var name, role string
	var commands []command

	finishValue := func() (bool, error) {
		args, ok := unquoteValue(strings.TrimSpace(buf.String()))
		if !ok {
			return false, nil
		}
		if role != "" {
			args = role + ": " + args
			role = ""
		}
		commands = append(commands, command{Name: name, Args: args})
		return true, nil
	}

	for _, r := range strings.TrimPrefix(text, "\ufeff") {
		if isNewline(r) {
			line++
		}
		fail := func(msg string) ([]command, error) {
			return nil, fmt.Errorf("(line %d): %s", line, msg)
		}
		switch state {
		case atLineStart:
			switch {
			case r == '#':
				state = inComment
			case isBlank(r) || isNewline(r):
			default:
				state = inName
				buf.Reset()
				buf.WriteRune(r)
			}
		case inComment:
			if isNewline(r) {
				state = atLineStart
			}
		case inName:
			switch {
			case isLetter(r):
				buf.WriteRune(r)
			case isBlank(r):
				word := strings.ToLower(buf.String())
				if !modelfileCommands[word] {
					return fail("invalid command " + strconv.Quote(buf.String()))
				}
				buf.Reset()
				switch word {
				case "from":
					name, state = "model", inValue
				case "parameter":
					state = inParameterName
				case "message":
					name, state = "message", inMessageRole
				default:
					name, state = word, inValue
				}
			default:
				return fail("invalid command")
			}
		case inParameterName:
			switch {
			case isLetter(r) || isDigit(r) || r == '_':
				buf.WriteRune(r)
			case isBlank(r):
				name, state = buf.String(), inValue
				buf.Reset()
			default:
				return fail("unexpected character in parameter name")
			}
		case inMessageRole:
			switch {
			case isLetter(r):
				buf.WriteRune(r)
			case isBlank(r):
				role = buf.String()
				if role != "system" && role != "user" && role != "assistant" {
					return fail("invalid message role " + strconv.Quote(role))
				}
				state = inValue
				buf.Reset()
			default:
				return fail("unexpected character in message role")
			}
		case inValue:
			if isNewline(r) {
				if done, _ := finishValue(); done {
					state = atLineStart
					buf.Reset()
					continue
				}
				buf.WriteRune(r) // inside an open quote
			} else if isBlank(r) || strconv.IsPrint(r) {
				buf.WriteRune(r)
			} // other non-printable runes are dropped, as Ollama drops them
		}
	}
	switch state {
	case inValue:
		if done, _ := finishValue(); !done {
			return nil, errors.New("unexpected EOF: unterminated quote")
		}
	case inName, inParameterName, inMessageRole:
		return nil, errors.New("unexpected EOF")
	}
	for _, c := range commands {
		if c.Name == "model" {
			return commands, nil
		}
	}
	return nil, errors.New("no FROM line")
}

// ---- templates (template/template.go) ---------------------------------------------------

var funcs = template.FuncMap{
	"json": func(v any) string {
		b, _ := json.Marshal(v)
		return string(b)
	},
}

// identifiers lists every field and variable name a parse tree mentions.
func identifiers(n parse.Node) []string {
	var names []string
	switch n := n.(type) {
	case *parse.ListNode:
		if n != nil {
			for _, c := range n.Nodes {
				names = append(names, identifiers(c)...)
			}
		}
	case *parse.ActionNode:
		names = identifiers(n.Pipe)
	case *parse.TemplateNode:
		if n.Pipe != nil {
			names = identifiers(n.Pipe)
		}
	case *parse.IfNode:
		names = branchIdentifiers(&n.BranchNode)
	case *parse.RangeNode:
		names = branchIdentifiers(&n.BranchNode)
	case *parse.WithNode:
		names = branchIdentifiers(&n.BranchNode)
	case *parse.PipeNode:
		if n != nil {
			for _, c := range n.Cmds {
				for _, a := range c.Args {
					names = append(names, identifiers(a)...)
				}
			}
		}
	case *parse.FieldNode:
		names = n.Ident
	case *parse.VariableNode:
		names = n.Ident
	}
	return names
}

func branchIdentifiers(b *parse.BranchNode) []string {
	names := identifiers(b.Pipe)
	names = append(names, identifiers(b.List)...)
	if b.ElseList != nil {
		names = append(names, identifiers(b.ElseList)...)
	}
	return names
}

type ollamaTemplate struct {
	tmpl *template.Template
	vars map[string]bool
}

func parseTemplate(s string) (*ollamaTemplate, error) {
	tmpl, err := template.New("").Option("missingkey=zero").Funcs(funcs).Parse(s)
	if err != nil {
		return nil, err
	}
	vars := map[string]bool{}
	for _, t := range tmpl.Templates() {
		for _, n := range t.Root.Nodes {
			for _, id := range identifiers(n) {
				vars[strings.ToLower(id)] = true
			}
		}
	}
	if !vars["messages"] && !vars["response"] {
		response := &parse.ActionNode{NodeType: parse.NodeAction, Pipe: &parse.PipeNode{
			NodeType: parse.NodePipe,
			Cmds: []*parse.CommandNode{{NodeType: parse.NodeCommand,
				Args: []parse.Node{&parse.FieldNode{NodeType: parse.NodeField, Ident: []string{"Response"}}}}},
		}}
		tmpl.Tree.Root.Nodes = append(tmpl.Tree.Root.Nodes, response)
	}
	return &ollamaTemplate{tmpl: tmpl, vars: vars}, nil
}

// collate gathers the system messages and merges consecutive messages of one role.
func collate(msgs []Message) (string, []*Message) {
	var system []string
	var merged []*Message
	for i := range msgs {
		m := msgs[i]
		if m.Role == "system" {
			system = append(system, m.Content)
		}
		if n := len(merged); n > 0 && merged[n-1].Role == m.Role && m.Role != "tool" {
			merged[n-1].Content += "\n\n" + m.Content
		} else {
			merged = append(merged, &m)
		}
	}
	return strings.Join(system, "\n\n"), merged
}

func (t *ollamaTemplate) execute(w io.Writer, v values) error {
	system, messages := collate(v.Messages)
	if v.Prompt != "" && v.Suffix != "" {
		return t.tmpl.Execute(w, map[string]any{
			"Prompt": v.Prompt, "Suffix": v.Suffix, "Response": "",
			"Think": false, "IsThinkSet": false,
		})
	}
	if t.vars["messages"] || t.vars["document"] {
		return t.tmpl.Execute(w, map[string]any{
			"System": system, "Messages": messages, "Tools": nil, "Response": "",
			"Think": false, "IsThinkSet": false, "Query": "", "Document": "", "Instruction": "",
		})
	}
	return errors.New("template does not use .Messages: Ollama's legacy per-turn rendering is not emulated")
}

// ---- requests (server/routes.go) --------------------------------------------------------

func render(req request) (string, error) {
	tmpl, err := parseTemplate(req.Template)
	if err != nil {
		return "", err
	}
	var v values
	switch {
	case req.Generate != nil:
		g := req.Generate
		if g.Prompt == "" {
			return "", errors.New("empty prompt: Ollama only loads the model and renders nothing")
		}
		if g.Suffix != "" {
			v = values{Prompt: g.Prompt, Suffix: g.Suffix}
		} else {
			var msgs []Message
			if g.System != "" {
				msgs = append(msgs, Message{Role: "system", Content: g.System})
			} else if req.System != "" {
				msgs = append(msgs, Message{Role: "system", Content: req.System})
			}
			v = values{Messages: append(msgs, Message{Role: "user", Content: g.Prompt})}
		}
	case req.Chat != nil:
		msgs := req.Chat.Messages
		if len(msgs) == 0 {
			return "", errors.New("no messages: Ollama only loads the model and renders nothing")
		}
		if msgs[0].Role != "system" && req.System != "" {
			msgs = append([]Message{{Role: "system", Content: req.System}}, msgs...)
		}
		v = values{Messages: msgs}
	case req.Values != nil:
		v = *req.Values
	default:
		return "", errors.New("request needs one of: modelfile, generate, chat, values")
	}
	var b bytes.Buffer
	if err := tmpl.execute(&b, v); err != nil {
		return "", err
	}
	return b.String(), nil
}

func handle(req request) result {
	if req.Modelfile != nil {
		commands, err := parseModelfile(*req.Modelfile)
		if err != nil {
			return result{Error: err.Error()}
		}
		return result{Commands: commands}
	}
	prompt, err := render(req)
	if err != nil {
		return result{Error: err.Error()}
	}
	return result{Prompt: &prompt}
}

func main() {
	input, err := io.ReadAll(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	trimmed := bytes.TrimSpace(input)
	out := json.NewEncoder(os.Stdout)
	out.SetEscapeHTML(false)
	if len(trimmed) > 0 && trimmed[0] == '[' {
		var reqs []request
		if err := json.Unmarshal(trimmed, &reqs); err != nil {
			fmt.Fprintln(os.Stderr, "stdin is not a JSON array of requests:", err)
			os.Exit(2)
		}
		results := make([]result, len(reqs))
		for i, r := range reqs {
			results[i] = handle(r)
		}
		_ = out.Encode(results)
		return
	}
	var req request
	if err := json.Unmarshal(trimmed, &req); err != nil {
		fmt.Fprintln(os.Stderr, "stdin is not a JSON request:", err)
		os.Exit(2)
	}
	_ = out.Encode(handle(req))
}
