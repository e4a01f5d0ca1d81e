//! A JSON-object prefix checker for constrained decoding (`response_format: {"type": "json_object"}`): it
//! reads text character by character and says whether the text so far can still be completed into one
//! JSON object (RFC 8259), and when the object is complete. The sampler keeps only tokens whose text keeps
//! the prefix valid, so what the server returns parses.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Num {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    E,
    ESign,
    Exp,
}

impl Num {
    /// A number may end here.
    fn can_end(self) -> bool {
        matches!(self, Num::Zero | Num::Int | Num::Frac | Num::Exp)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the top-level `{`.
    Start,
    /// After `{`: a key or `}`.
    KeyOrEnd,
    /// After `,` in an object: a key.
    Key,
    /// After a key: `:`.
    Colon,
    /// A value (after `:` or `,` in an array).
    Value,
    /// After `[`: a value or `]`.
    ValueOrEnd,
    /// After a value: `,` or the closing bracket.
    After,
    /// Inside a string; `escape`: 0 none, 1 after `\`, 2..=5 hex digits of `\u` still to come.
    Str {
        key: bool,
        escape: u8,
    },
    Number(Num),
    /// Inside `true`, `false` or `null`: the characters still to come.
    Literal(&'static str),
    Done,
}

/// The checker's state: where in the grammar the text stands, and the open containers.
#[derive(Debug, Clone)]
pub struct JsonPrefix {
    state: State,
    /// `true` for an object, `false` for an array.
    stack: Vec<bool>,
    /// Whitespace characters in a row (capped, so a model cannot pad forever).
    blank: usize,
}

impl Default for JsonPrefix {
    fn default() -> Self {
        Self {
            state: State::Start,
            stack: Vec::new(),
            blank: 0,
        }
    }
}

/// Longest run of whitespace accepted between tokens.
const MAX_BLANK: usize = 40;

impl JsonPrefix {
    /// Whether the top-level object is closed.
    #[must_use]
    pub fn complete(&self) -> bool {
        self.state == State::Done
    }

    /// Feeds `s`; false (and an unspecified state) when the text can no longer become a JSON object.
    pub fn push_str(&mut self, s: &str) -> bool {
        s.chars().all(|c| self.push(c))
    }

    fn close(&mut self, c: char) -> bool {
        let want = if c == '}' { Some(&true) } else { Some(&false) };
        if self.stack.last() != want {
            return false;
        }
        self.stack.pop();
        self.state = if self.stack.is_empty() {
            State::Done
        } else {
            State::After
        };
        true
    }

    fn open(&mut self, c: char) -> bool {
        match c {
            '{' => {
                self.stack.push(true);
                self.state = State::KeyOrEnd;
            }
            '[' => {
                self.stack.push(false);
                self.state = State::ValueOrEnd;
            }
            _ => return false,
        }
        true
    }

    /// The first character of a value.
    fn value(&mut self, c: char) -> bool {
        self.state = match c {
            '{' | '[' => return self.open(c),
            '"' => State::Str {
                key: false,
                escape: 0,
            },
            '-' => State::Number(Num::Minus),
            '0' => State::Number(Num::Zero),
            '1'..='9' => State::Number(Num::Int),
            't' => State::Literal("rue"),
            'f' => State::Literal("alse"),
            'n' => State::Literal("ull"),
            _ => return false,
        };
        true
    }

    fn push(&mut self, c: char) -> bool {
        let blank = matches!(c, ' ' | '\t' | '\n' | '\r');
        let in_token = matches!(
            self.state,
            State::Str { .. } | State::Number(_) | State::Literal(_)
        );
        if blank && !in_token {
            self.blank += 1;
            return self.blank <= MAX_BLANK && self.state != State::Done;
        }
        self.blank = 0;
        match self.state {
            State::Start => c == '{' && self.open(c),
            State::Done => false,
            State::KeyOrEnd | State::Key => match c {
                '"' => {
                    self.state = State::Str {
                        key: true,
                        escape: 0,
                    };
                    true
                }
                '}' if self.state == State::KeyOrEnd => self.close(c),
                _ => false,
            },
            State::Colon => {
                self.state = State::Value;
                c == ':'
            }
            State::Value => self.value(c),
            State::ValueOrEnd => {
                if c == ']' {
                    self.close(c)
                } else {
                    self.value(c)
                }
            }
            State::After => match c {
                ',' => {
                    self.state = if self.stack.last() == Some(&true) {
                        State::Key
                    } else {
                        State::Value
                    };
                    true
                }
                '}' | ']' => self.close(c),
                _ => false,
            },
            State::Str { key, escape } => self.string(key, escape, c),
            State::Literal(rest) => self.literal(rest, c),
            State::Number(n) => self.number(n, c),
        }
    }

    /// Inside a string (a key or a value), `escape` characters into an escape sequence.
    fn string(&mut self, key: bool, escape: u8, c: char) -> bool {
        let next = |escape| State::Str { key, escape };
        self.state = match (escape, c) {
            (0, '"') => {
                if key {
                    State::Colon
                } else {
                    State::After
                }
            }
            (0, '\\') => next(1),
            (0, c) if (c as u32) < 0x20 => return false,
            (0, _) | (1, '"' | '\\' | '/' | 'b' | 'f' | 'n' | 'r' | 't') => next(0),
            (1, 'u') => next(2),
            (2..=5, c) if c.is_ascii_hexdigit() => next(if escape == 5 { 0 } else { escape + 1 }),
            _ => return false,
        };
        true
    }

    /// Inside `true`, `false` or `null`, `rest` still to come.
    fn literal(&mut self, rest: &'static str, c: char) -> bool {
        let mut it = rest.chars();
        if it.next() != Some(c) {
            return false;
        }
        let rest = it.as_str();
        self.state = if rest.is_empty() {
            State::After
        } else {
            State::Literal(rest)
        };
        true
    }

    /// Inside a number, in state `n`.
    fn number(&mut self, n: Num, c: char) -> bool {
        let next = match (n, c) {
            (Num::Minus, '0') => Num::Zero,
            (Num::Minus, '1'..='9') | (Num::Int, '0'..='9') => Num::Int,
            (Num::Zero | Num::Int, '.') => Num::Dot,
            (Num::Dot | Num::Frac, '0'..='9') => Num::Frac,
            (Num::Zero | Num::Int | Num::Frac, 'e' | 'E') => Num::E,
            (Num::E, '+' | '-') => Num::ESign,
            (Num::E | Num::ESign | Num::Exp, '0'..='9') => Num::Exp,
            _ if n.can_end() => {
                // the number ended: the character belongs to what follows it
                self.state = State::After;
                return self.push(c);
            }
            _ => return false,
        };
        self.state = State::Number(next);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid_prefix(s: &str) -> bool {
        JsonPrefix::default().push_str(s)
    }

    #[test]
    fn prefixes_of_objects_pass_and_everything_else_fails() {
        let doc = r#" {"a": [1, -2.5e+3, 0.25, true, false, null, {"b": "x\"\u00e9\n"}], "c": {}, "d": []}"#;
        // every prefix of a valid object is a valid prefix; only the whole is complete
        for (i, _) in doc.char_indices() {
            let mut j = JsonPrefix::default();
            assert!(j.push_str(&doc[..i]), "prefix {:?}", &doc[..i]);
            assert!(!j.complete(), "{:?}", &doc[..i]);
        }
        let mut j = JsonPrefix::default();
        assert!(j.push_str(doc) && j.complete());
        assert!(!j.clone().push_str("x") && !j.push_str(" {"));
        // checked against serde_json: these are not JSON objects (nor prefixes of one)
        for bad in [
            "[1]",
            "\"a\"",
            "{a",
            "{\"a\" 1",
            "{\"a\": 01",
            "{\"a\": 1.}",
            "{\"a\": -}",
            "{\"a\": tru }",
            "{\"a\": 1,}",
            "{\"a\": [1,]}",
            "{\"a\": 1]",
            "{\"a\": \"\\x\"}",
            "{\"a\": \"\\u12g4\"}",
            "{\"a\": \"line\nbreak\"}",
            "{}}",
        ] {
            assert!(!valid_prefix(bad), "{bad:?} accepted");
            assert!(serde_json::from_str::<serde_json::Value>(bad).map_or(true, |v| !v.is_object()));
        }
        for good in ["{}", "{\"k\": 0}", "{\"k\": [[], {}, 1e5, -0.0]}"] {
            let mut j = JsonPrefix::default();
            assert!(j.push_str(good) && j.complete(), "{good}");
            assert!(serde_json::from_str::<serde_json::Value>(good)
                .unwrap()
                .is_object());
        }
        // endless padding is refused
        assert!(!valid_prefix(&format!("{{{}", " ".repeat(MAX_BLANK + 1))));
    }
}
