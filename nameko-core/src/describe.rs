//! What a service says about itself: its entrypoints with their parameters and doc
//! lines, as the built-in introspection RPC ([`INSPECT_METHOD`]) answers and `inspect`
//! prints.
//!
//! `#[nameko::service]` writes an [`EntrypointDoc`] per entrypoint into
//! [`Service::entrypoint_docs`]; a service written by hand may do the same, or leave the
//! default (method and kind only).

use serde::{Deserialize, Serialize};

use crate::service::{Entrypoints, Service};

/// The method of the built-in introspection RPC every service with an RPC entrypoint
/// answers on its `rpc-<service>` queue, without a worker: `<service>._nameko_inspect`,
/// no arguments, replying with a [`ServiceDescription`] as JSON. Method names starting
/// with `_nameko_` are reserved: an RPC entrypoint named so fails setup.
pub const INSPECT_METHOD: &str = "_nameko_inspect";

/// The static documentation of one entrypoint, as written in the source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntrypointDoc {
    method: &'static str,
    kind: &'static str,
    detail: &'static str,
    params: &'static [ParamDoc],
    returns: &'static str,
    doc: &'static [&'static str],
}

impl EntrypointDoc {
    /// Documents the entrypoint of `kind` registered as `method`: `detail` says what
    /// fires it (an HTTP route, an event, a schedule; `""` for none), `params` its
    /// parameters, `returns` its return type as written (`""` for none) and `doc` its
    /// doc comment, line by line.
    ///
    /// ```
    /// use nameko_core::describe::{EntrypointDoc, ParamDoc};
    ///
    /// const GREET: EntrypointDoc = EntrypointDoc::new(
    ///     "greet",
    ///     "rpc",
    ///     "",
    ///     &[ParamDoc::new("name", "String")],
    ///     "Result<String, GreetingError>",
    ///     &["Greets `name`."],
    /// );
    /// assert_eq!(GREET.method(), "greet");
    /// ```
    #[must_use]
    pub const fn new(
        method: &'static str,
        kind: &'static str,
        detail: &'static str,
        params: &'static [ParamDoc],
        returns: &'static str,
        doc: &'static [&'static str],
    ) -> Self {
        Self {
            method,
            kind,
            detail,
            params,
            returns,
            doc,
        }
    }

    /// The method the entrypoint is registered under.
    #[must_use]
    pub const fn method(&self) -> &'static str {
        self.method
    }

    /// The entrypoint's kind (`rpc`, `event_handler`, `http`, `timer`, `ws_rpc`...).
    #[must_use]
    pub const fn kind(&self) -> &'static str {
        self.kind
    }
}

/// One parameter: its name as callers give it and its Rust type as written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParamDoc {
    name: &'static str,
    ty: &'static str,
}

impl ParamDoc {
    /// The parameter `name` of type `ty`.
    #[must_use]
    pub const fn new(name: &'static str, ty: &'static str) -> Self {
        Self { name, ty }
    }
}

/// What the introspection RPC replies: the service and each of its entrypoints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ServiceDescription {
    /// The service's name.
    pub service: String,
    /// `nameko-rs <version>` of the answering framework.
    pub framework: String,
    /// Its entrypoints, in declaration order.
    pub entrypoints: Vec<EntrypointDescription>,
}

/// One entrypoint in a [`ServiceDescription`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct EntrypointDescription {
    /// The method callers address.
    pub method: String,
    /// `rpc`, `event_handler`, `http`, `timer`, `ws_rpc`, `once`...
    pub kind: String,
    /// What fires it: `GET /greet` for HTTP, `greeting.greeted` for an event handler, the
    /// schedule of a timer; absent when not documented.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Its parameters, in order (absent for a service written without `#[service]`).
    #[serde(default)]
    pub params: Vec<ParamDescription>,
    /// Its return type as written, when documented.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub returns: Option<String>,
    /// Its doc comment, one entry per line.
    #[serde(default)]
    pub doc: Vec<String>,
}

/// One parameter in an [`EntrypointDescription`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ParamDescription {
    /// The name callers give it as a keyword argument.
    pub name: String,
    /// Its Rust type as written in the source.
    #[serde(rename = "type")]
    pub ty: String,
}

impl ServiceDescription {
    /// The description of service `S`: every entrypoint it declares, with the
    /// documentation `#[service]` wrote for it.
    ///
    /// ```
    /// # use nameko_core::{entrypoints::Dummy, *};
    /// # pub struct Echo;
    /// # pub struct EchoProviders;
    /// # impl Providers for EchoProviders {
    /// #     type Worker = Echo;
    /// #     fn slots(&mut self) -> Vec<(&'static str, &mut dyn ProviderSlot)> { Vec::new() }
    /// #     async fn build<'a>(&'a self, _: &mut WorkerBuilder<'a>) -> Result<Echo, DependencyError> { Ok(Echo) }
    /// # }
    /// # impl Dependencies for Echo { type Providers = EchoProviders; fn providers() -> EchoProviders { EchoProviders } }
    /// # impl Service for Echo {
    /// #     const NAME: &'static str = "echo";
    /// #     fn entrypoints(e: &mut Entrypoints<Self>) {
    /// #         e.add("echo", Dummy::<String, String>::new(), |_: Echo, s: String| async move { Ok::<_, RemoteError>(s) });
    /// #     }
    /// # }
    /// use nameko_core::describe::ServiceDescription;
    ///
    /// let description = ServiceDescription::of::<Echo>();
    /// assert_eq!(description.service, "echo");
    /// assert_eq!(description.entrypoints[0].method, "echo");
    /// assert_eq!(description.entrypoints[0].kind, "dummy");
    /// ```
    #[must_use]
    pub fn of<S: Service>() -> Self {
        let mut declared = Entrypoints::<S>::new();
        S::entrypoints(&mut declared);
        let docs = S::entrypoint_docs();
        let entrypoints = declared
            .infos()
            .map(|(method, kind)| {
                let doc = docs.iter().find(|d| d.method == method && d.kind == kind);
                EntrypointDescription {
                    method: method.to_owned(),
                    kind: kind.to_owned(),
                    detail: doc.map(|d| d.detail).filter(|d| !d.is_empty()).map(str::to_owned),
                    params: doc
                        .map(|d| {
                            d.params
                                .iter()
                                .map(|p| ParamDescription {
                                    name: p.name.to_owned(),
                                    ty: p.ty.to_owned(),
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                    returns: doc.map(|d| d.returns).filter(|r| !r.is_empty()).map(str::to_owned),
                    doc: doc
                        .map(|d| d.doc.iter().map(|line| (*line).to_owned()).collect())
                        .unwrap_or_default(),
                }
            })
            .collect();
        Self {
            service: S::NAME.to_owned(),
            framework: format!("nameko-rs {}", env!("CARGO_PKG_VERSION")),
            entrypoints,
        }
    }
}
