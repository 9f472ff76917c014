//! Rendering a template source against a [`Ctx`]: confd's Go `text/template` dialect
//! (gotmpl) or handlebars (`.hbs` sources), with the same helpers. Pure: the source and
//! the data come in, the text or an error saying where (file, line) and why comes out.

use super::funcs::{self, Ctx, HELPERS};
use gotmpl::{FuncMap, Template, Value};
use handlebars::{
    Context, Handlebars, Helper, HelperDef, RenderContext, RenderError, RenderErrorReason,
    ScopedJson,
};
use std::sync::{Arc, Mutex};
use thiserror::Error;

/// Range iterations one Go render may make (a template loops at most this often).
pub const RANGE_ITERS_MAX: u64 = 10_000_000;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{file}{}: {why}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct TemplateError {
    /// The template's file name.
    pub file: String,
    pub line: Option<usize>,
    pub why: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Go,
    Handlebars,
}

impl Dialect {
    /// `.hbs` sources are handlebars; everything else is confd's Go dialect.
    pub fn of(src_path: &str) -> Self {
        if src_path.ends_with(".hbs") {
            Dialect::Handlebars
        } else {
            Dialect::Go
        }
    }
}

/// Renders `source` (named `name`, as errors cite it) with `ctx`'s data and helpers.
pub fn render(name: &str, source: &str, ctx: Arc<Ctx>) -> Result<String, TemplateError> {
    match Dialect::of(name) {
        Dialect::Go => render_go(name, source, ctx),
        Dialect::Handlebars => render_hbs(name, source, ctx),
    }
}

/// The helper call that failed last, so an execution error can name its line.
type LastCall = Arc<Mutex<Option<(String, Vec<Value>)>>>;

fn go_funcs(ctx: &Arc<Ctx>, last: &LastCall) -> FuncMap {
    let mut map = FuncMap::new();
    for &(name, f) in HELPERS {
        let (ctx, last) = (ctx.clone(), last.clone());
        map.insert(
            name.to_string(),
            Arc::new(move |args: &[Value]| {
                funcs::call(&ctx, name, f, args).inspect_err(|_| {
                    *last.lock().expect("last call") = Some((name.to_string(), args.to_vec()));
                })
            }),
        );
    }
    map
}

fn render_go(name: &str, source: &str, ctx: Arc<Ctx>) -> Result<String, TemplateError> {
    let last: LastCall = Arc::default();
    let fail = |line: Option<usize>, why: String| TemplateError {
        file: name.to_string(),
        line,
        why,
    };
    let tmpl = Template::new(name)
        .max_range_iters(RANGE_ITERS_MAX)
        .funcs(go_funcs(&ctx, &last))
        .parse(source)
        .map_err(|e| match &e {
            gotmpl::TemplateError::Parse { line, message, .. }
            | gotmpl::TemplateError::Lex { line, message, .. } => {
                fail(Some(*line), message.clone())
            }
            // An undefined function: gotmpl names it but not where it is.
            other => {
                let why = other.to_string();
                let func = why.rsplit(": ").next().unwrap_or_default();
                fail(line_of_call(source, func, &[]), why)
            }
        })?;
    tmpl.execute_to_string(&Value::Nil).map_err(|e| {
        let call = last.lock().expect("last call").take();
        let why = match e {
            gotmpl::TemplateError::Exec(m) => m,
            other => other.to_string(),
        };
        let line = match &call {
            Some((f, args)) => line_of_call(source, f, args),
            None => line_of_call(source, why.rsplit(": ").next().unwrap_or_default(), &[]),
        };
        fail(line, why)
    })
}

/// The first line calling `func` with the failing call's first string argument: gotmpl
/// reports no position for execution errors, and confd users need one.
fn line_of_call(source: &str, func: &str, args: &[Value]) -> Option<usize> {
    let arg = match args.first() {
        Some(Value::String(s)) => Some(format!("{s:?}")),
        _ => None,
    };
    let is_call = |l: &str| {
        l.split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .any(|w| w == func)
            && arg.as_ref().is_none_or(|a| l.contains(a.as_str()))
    };
    source.lines().position(is_call).map(|i| i + 1)
}

/// One confd helper as a handlebars helper returning a value (usable as a subexpression).
struct HbsHelper {
    name: &'static str,
    f: funcs::Helper,
    ctx: Arc<Ctx>,
}

impl HelperDef for HbsHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let args: Vec<Value> = h.params().iter().map(|p| from_json(p.value())).collect();
        let out = (self.f)(&self.ctx, &args).map_err(|e| {
            RenderError::from(RenderErrorReason::Other(format!(
                "error calling {}: {e}",
                self.name
            )))
        })?;
        Ok(ScopedJson::Derived(to_json(&out)))
    }
}

fn render_hbs(name: &str, source: &str, ctx: Arc<Ctx>) -> Result<String, TemplateError> {
    let mut hb = Handlebars::new();
    // Config files are not HTML.
    hb.register_escape_fn(handlebars::no_escape);
    for &(helper, f) in HELPERS {
        let ctx = ctx.clone();
        hb.register_helper(
            helper,
            Box::new(HbsHelper {
                name: helper,
                f,
                ctx,
            }),
        );
    }
    let fail = |line: Option<usize>, why: String| TemplateError {
        file: name.to_string(),
        line,
        why,
    };
    hb.register_template_string(name, source).map_err(|e| {
        let why = e.reason().to_string();
        fail(e.pos().map(|(line, _)| line), why)
    })?;
    hb.render(name, &serde_json::Value::Null)
        .map_err(|e| fail(e.line_no, e.reason().to_string()))
}

/// A helper's value for handlebars.
pub fn to_json(v: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Value::Nil => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Int(i) => J::from(*i),
        Value::Uint(u) => J::from(*u),
        Value::Float(f) => J::from(*f),
        Value::String(s) => J::String(s.to_string()),
        Value::List(l) => J::Array(l.iter().map(to_json).collect()),
        Value::Map(m) => J::Object(m.iter().map(|(k, v)| (k.to_string(), to_json(v))).collect()),
        other => J::String(other.to_string()),
    }
}

/// A handlebars argument as a helper sees it (whole numbers are integers, as Go's are).
pub fn from_json(v: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    match v {
        J::Null => Value::Nil,
        J::Bool(b) => Value::Bool(*b),
        J::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Value::Int(i),
            (None, Some(f)) => Value::Float(f),
            (None, None) => Value::Nil,
        },
        J::String(s) => Value::String(s.as_str().into()),
        J::Array(a) => Value::List(a.iter().map(from_json).collect::<Vec<_>>().into()),
        J::Object(o) => Value::Map(Arc::new(
            o.iter()
                .map(|(k, v)| (Arc::<str>::from(k.as_str()), from_json(v)))
                .collect(),
        )),
    }
}
