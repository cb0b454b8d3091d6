//! Glob patterns: `*`, `?` and `\` escapes. Linear-time-ish matching (no recursion).

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Lit(char),
    Any,
    Star,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    toks: Vec<Tok>,
    case_insensitive: bool,
}

impl Glob {
    pub fn new(pattern: &str, case_insensitive: bool) -> Result<Glob, String> {
        if pattern.is_empty() {
            return Err("empty pattern".into());
        }
        let mut toks = Vec::new();
        let mut chars = pattern.chars();
        while let Some(c) = chars.next() {
            toks.push(match c {
                '*' => {
                    if toks.last() == Some(&Tok::Star) {
                        continue;
                    }
                    Tok::Star
                }
                '?' => Tok::Any,
                '\\' => Tok::Lit(
                    chars
                        .next()
                        .ok_or(format!("pattern {pattern:?} ends with a lone `\\`"))?,
                ),
                c => Tok::Lit(c),
            });
        }
        Ok(Glob {
            toks,
            case_insensitive,
        })
    }

    fn eq(&self, a: char, b: char) -> bool {
        if self.case_insensitive {
            a.eq_ignore_ascii_case(&b)
        } else {
            a == b
        }
    }

    /// Classic wildcard matching with one backtrack point (the last `*`): O(n·m) worst
    /// case, no recursion, no allocation beyond the input's chars.
    pub fn matches(&self, text: &str) -> bool {
        let t: Vec<char> = text.chars().collect();
        let p = &self.toks;
        let (mut ti, mut pi) = (0usize, 0usize);
        let mut star: Option<(usize, usize)> = None;
        while ti < t.len() {
            match p.get(pi) {
                Some(Tok::Star) => {
                    star = Some((pi, ti));
                    pi += 1;
                }
                Some(Tok::Any) => {
                    pi += 1;
                    ti += 1;
                }
                Some(Tok::Lit(c)) if self.eq(*c, t[ti]) => {
                    pi += 1;
                    ti += 1;
                }
                _ => match star {
                    Some((sp, st)) => {
                        pi = sp + 1;
                        ti = st + 1;
                        star = Some((sp, st + 1));
                    }
                    None => return false,
                },
            }
        }
        p[pi..].iter().all(|t| *t == Tok::Star)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, t: &str) -> bool {
        Glob::new(p, false).unwrap().matches(t)
    }

    #[test]
    fn stars_and_questions() {
        assert!(m("gpt-*", "gpt-4o"));
        assert!(m("gpt-*", "gpt-"));
        assert!(!m("gpt-*", "gpt"));
        assert!(!m("gpt-*", "xgpt-4"));
        assert!(m("o1*", "o1"));
        assert!(m("o1*", "o1-mini"));
        assert!(m("*", ""));
        assert!(m("*-mini", "gpt-4o-mini"));
        assert!(!m("*-mini", "gpt-4o-mini-2"));
        assert!(m("llama-?-*b", "llama-3-70b"));
        assert!(!m("llama-?-*b", "llama-31-70b"));
        assert!(m("a*b*c", "axxbyybzc"));
        assert!(!m("a*b*c", "axxbyyb"));
        assert!(m("exact", "exact"));
        assert!(!m("exact", "exact2"));
        assert!(m("**x", "abx"));
        assert!(m("é*", "éclair"));
    }

    #[test]
    fn escapes_and_case() {
        assert!(m(r"what\?", "what?"));
        assert!(!m(r"what\?", "whatx"));
        assert!(m(r"a\*", "a*"));
        assert!(!m(r"a\*", "ab"));
        assert!(Glob::new(r"a\", false).is_err());
        assert!(Glob::new("", false).is_err());
        assert!(!m("GPT-*", "gpt-4"));
        assert!(Glob::new("GPT-*", true).unwrap().matches("gpt-4"));
    }

    #[test]
    fn pathological_patterns_stay_fast() {
        let text = "a".repeat(10_000);
        let p = Glob::new(&format!("{}b", "*a".repeat(50)), false).unwrap();
        assert!(!p.matches(&text));
    }
}
