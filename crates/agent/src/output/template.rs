//! What a file holds: one secret's value, or a template over several rendered with minijinja
//! (`{{ secret("db-password") }}`), bounded in fuel and output, its errors naming kinds and
//! lines, never values.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior, Value};
use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretString};

/// The largest file rendered.
pub(crate) const MAX_OUTPUT: usize = 4 * 1024 * 1024;
/// The most instructions one render may run (a loop without end runs out of it).
const FUEL: u64 = 1_000_000;

/// A file's content: a secret's value, or a template's source.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    Secret(String),
    Template(Arc<str>),
}

/// Why a render gave no content.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RenderError {
    /// These secrets are not among the values given: read them and render again.
    Missing(Vec<String>),
    /// The template is wrong (a kind and a line, or an invalid name), or its output too big.
    Invalid(String),
}

/// Whether `source` compiles (checked at start, so a broken template never writes a file).
pub(crate) fn check(source: &Source) -> Result<(), String> {
    match source {
        Source::Secret(_) => Ok(()),
        Source::Template(t) => {
            let mut env = environment();
            env.add_template("file", t)
                .map(|_| ())
                .map_err(|e| describe(&e))
        }
    }
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_fuel(Some(FUEL));
    // Raw text: a value is written as it is, whatever the file's name.
    env.set_auto_escape_callback(|_| AutoEscape::None);
    // A misspelt variable is an error, not an empty string in a connection string.
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // A file ends as its template does (a `.env` its last line's newline).
    if let Ok(syntax) = minijinja::syntax::SyntaxConfig::builder()
        .keep_trailing_newline(true)
        .build()
    {
        env.set_syntax(syntax);
    }
    env
}

/// A kind and a line: minijinja's detail may quote a value a filter choked on.
fn describe(e: &minijinja::Error) -> String {
    let kind = match e.kind() {
        ErrorKind::SyntaxError => "syntax error".to_string(),
        ErrorKind::OutOfFuel => "the template ran too long (a loop without end?)".to_string(),
        ErrorKind::UndefinedError => "an undefined variable or attribute".to_string(),
        ErrorKind::UnknownFunction => "an unknown function".to_string(),
        ErrorKind::UnknownFilter => "an unknown filter".to_string(),
        k => format!("{k}"),
    };
    match e.line() {
        Some(l) => format!("{kind} (line {l})"),
        None => kind,
    }
}

/// A writer that refuses to grow past [`MAX_OUTPUT`] and zeroes every buffer it leaves.
struct Bounded(Zeroizing<Vec<u8>>);

impl std::io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let need = self.0.len() + buf.len();
        if need > MAX_OUTPUT {
            return Err(std::io::Error::other("too large"));
        }
        if need > self.0.capacity() {
            // Grown by hand: a Vec's own reallocation would leave the old buffer unzeroed.
            let mut bigger = Zeroizing::new(Vec::with_capacity(
                need.max(self.0.capacity() * 2).min(MAX_OUTPUT),
            ));
            bigger.extend_from_slice(&self.0);
            self.0 = bigger;
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The content `source` gives with `values` (by lower-cased name), or what is missing.
pub(crate) fn render(
    source: &Source,
    values: Arc<HashMap<String, SecretString>>,
) -> Result<Zeroizing<Vec<u8>>, RenderError> {
    let t = match source {
        Source::Secret(name) => {
            return match values.get(&name.to_ascii_lowercase()) {
                Some(s) => Ok(Zeroizing::new(s.expose_secret().as_bytes().to_vec())),
                None => Err(RenderError::Missing(vec![name.clone()])),
            }
        }
        Source::Template(t) => t,
    };
    let mut env = environment();
    let missing = Arc::new(Mutex::new(Vec::<String>::new()));
    let invalid = Arc::new(Mutex::new(None::<String>));
    // Shared with the template's `secret` function (which must own what it reads).
    let held = values;
    {
        let (missing, invalid) = (missing.clone(), invalid.clone());
        env.add_function("secret", move |name: String| {
            if let Err(e) = keyvault_failover::SecretName::new(&name) {
                *invalid.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(format!("secret({name:?}): {e}"));
                return Err(minijinja::Error::new(ErrorKind::InvalidOperation, "name"));
            }
            match held.get(&name.to_ascii_lowercase()) {
                Some(s) => Ok(Value::from(s.expose_secret())),
                None => {
                    missing.lock().unwrap_or_else(|p| p.into_inner()).push(name);
                    // An empty string: the render goes on and finds every missing name at once.
                    Ok(Value::from(""))
                }
            }
        });
    }
    env.add_template("file", t)
        .map_err(|e| RenderError::Invalid(describe(&e)))?;
    let tmpl = env
        .get_template("file")
        .map_err(|e| RenderError::Invalid(describe(&e)))?;
    let mut out = Bounded(Zeroizing::new(Vec::new()));
    let rendered = tmpl.render_captured_to(minijinja::context! {}, &mut out);
    if let Some(m) = invalid.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(RenderError::Invalid(m));
    }
    let mut missing = std::mem::take(&mut *missing.lock().unwrap_or_else(|p| p.into_inner()));
    if !missing.is_empty() {
        missing.sort();
        missing.dedup();
        return Err(RenderError::Missing(missing));
    }
    match rendered {
        Ok(_) => Ok(out.0),
        Err(e) if e.kind() == ErrorKind::WriteFailure => Err(RenderError::Invalid(format!(
            "the output is larger than {MAX_OUTPUT} bytes"
        ))),
        Err(e) => Err(RenderError::Invalid(describe(&e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(pairs: &[(&str, &str)]) -> Arc<HashMap<String, SecretString>> {
        Arc::new(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), SecretString::from(v.to_string())))
                .collect(),
        )
    }

    fn template(t: &str) -> Source {
        Source::Template(Arc::from(t))
    }

    #[test]
    fn a_secret_or_a_template_renders_raw() {
        let v = values(&[("db-password", "p<&>\"w"), ("user", "app")]);
        let out = render(&Source::Secret("DB-Password".into()), v.clone()).unwrap();
        assert_eq!(&out[..], b"p<&>\"w");
        let t = template("postgres://{{ secret('user') }}:{{ secret('db-password') }}@db/app\n");
        assert_eq!(
            &render(&t, v.clone()).unwrap()[..],
            b"postgres://app:p<&>\"w@db/app\n"
        );
        let json = template("{\"password\": {{ secret('db-password') | tojson }}}");
        let out = render(&json, v.clone()).unwrap();
        let parsed: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(parsed["password"], "p<&>\"w");
    }

    #[test]
    fn every_missing_secret_is_named_at_once() {
        let t = template("{{ secret('b') }}{{ secret('a') }}{{ secret('user') }}{{ secret('a') }}");
        let e = render(&t, values(&[("user", "app")])).unwrap_err();
        assert_eq!(e, RenderError::Missing(vec!["a".into(), "b".into()]));
    }

    #[test]
    fn bad_templates_are_errors_that_quote_no_value() {
        let v = values(&[("x", "hunter2")]);
        for (t, says) in [
            (
                "{% for i in range(10) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
                "too long",
            ),
            ("{{ secret('x') | int }}", "line 1"),
            ("{{ nope }}", "undefined"),
            ("{{ secret('bad name!') }}", "secret(\"bad name!\")"),
            ("{% for %}", "syntax"),
            ("{{ 'x' * 5000000 }}", "larger than"),
        ] {
            let e = match render(&template(t), v.clone()) {
                Err(RenderError::Invalid(m)) => m,
                other => panic!("{t}: {other:?}"),
            };
            assert!(e.contains(says), "{t}: {e}");
            assert!(!e.contains("hunter2"), "{t}: {e}");
        }
        assert!(check(&template("{% for %}")).is_err());
        assert!(check(&template("{{ secret('x') }}")).is_ok());
    }
}
