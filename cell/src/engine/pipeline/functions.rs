//! Built-in functions: the leaves a pipeline names with `function:`.
//!
//! Contract: a [`Function`] is built once per pipeline instance from its stage's `args`
//! (bad arguments fail at load time, naming the stage) and then called per request with the
//! request value and an [`Emitter`] for its outputs (zero, one or several, in order). The
//! registry is explicit ([`Functions`]) so the cell registers its µBench functions
//! (`computePi`, `loader`) next to the engine's own `echo` and `sleep`; a worker process
//! must be given the same registry as its parent.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::Value;

use super::{BatchItem, Emitter};

/// A built-in function, called once per request that reaches its stage.
pub trait Function: Send + Sync + 'static {
    /// Run on `input`, emitting outputs in order; `Err` is the cause shown to the caller.
    fn call<'a>(&'a self, input: Value, out: &'a Emitter) -> BoxFuture<'a, Result<(), String>>;

    /// Run a micro-batch (profile `batch`): one result per item, in order; each item's
    /// outputs go to its own emitter, and an item's error fails only that item. The
    /// default runs the items one after another with [`Function::call`]; a function that
    /// gains from batching (one model call for many inputs) overrides it.
    fn call_batch(&self, items: Vec<BatchItem>) -> BoxFuture<'_, Vec<Result<(), String>>> {
        Box::pin(async move {
            let mut results = Vec::with_capacity(items.len());
            for item in items {
                results.push(self.call(item.input, &item.out).await);
            }
            results
        })
    }
}

/// Builds a function from its stage's `args` (absent args = `None`).
pub type FunctionFactory =
    Arc<dyn Fn(Option<&Value>) -> Result<Arc<dyn Function>, String> + Send + Sync>;

/// The functions a pipeline may name.
#[derive(Clone, Default)]
pub struct Functions {
    factories: BTreeMap<String, FunctionFactory>,
}

impl std::fmt::Debug for Functions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.factories.keys()).finish()
    }
}

impl Functions {
    /// The engine's own functions: `echo` (emits its input) and `sleep` (waits
    /// `args.ms` milliseconds, then emits its input; a stand-in for slow work; with
    /// `args.blocking: true` it blocks its thread, like CPU-bound or blocking user code).
    pub fn builtin() -> Self {
        let mut functions = Self::default();
        functions.register("echo", |_| Ok(Arc::new(Echo)));
        functions.register("sleep", |args| Ok(Arc::new(Sleep::from_args(args)?)));
        functions
    }

    /// Add (or replace) a function under `name`.
    pub fn register<F>(&mut self, name: &str, factory: F)
    where
        F: Fn(Option<&Value>) -> Result<Arc<dyn Function>, String> + Send + Sync + 'static,
    {
        self.factories.insert(name.to_owned(), Arc::new(factory));
    }

    /// Build the function `name` with `args`.
    pub fn build(&self, name: &str, args: Option<&Value>) -> Result<Arc<dyn Function>, String> {
        let factory = self.factories.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.factories.keys().map(String::as_str).collect();
            format!("unknown function {name:?} (known: {})", known.join(", "))
        })?;
        factory(args)
    }
}

struct Echo;

impl Function for Echo {
    fn call<'a>(&'a self, input: Value, out: &'a Emitter) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move { out.emit(input) })
    }
}

struct Sleep {
    delay: Duration,
    blocking: bool,
}

impl Sleep {
    fn from_args(args: Option<&Value>) -> Result<Self, String> {
        let ms = match args {
            None => 0,
            Some(args) => args
                .get("ms")
                .and_then(Value::as_u64)
                .ok_or("sleep needs args {ms: <whole milliseconds>}")?,
        };
        let blocking = args
            .and_then(|a| a.get("blocking"))
            .map(|b| b.as_bool().ok_or("sleep's blocking must be true or false"))
            .transpose()?
            .unwrap_or(false);
        Ok(Self {
            delay: Duration::from_millis(ms),
            blocking,
        })
    }
}

impl Function for Sleep {
    fn call<'a>(&'a self, input: Value, out: &'a Emitter) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            if self.blocking {
                std::thread::sleep(self.delay);
            } else {
                tokio::time::sleep(self.delay).await;
            }
            out.emit(input)
        })
    }
}
