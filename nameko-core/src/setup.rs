//! What extensions see while they set up: [`SetupContext`], runner [`Resources`] and
//! runner-wide shared state.

use std::{
    any::{Any, TypeId, type_name},
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex},
};

use crate::{config::Config, context::EntrypointInfo, describe::ServiceDescription, error::SetupError};

// ===== Resources =====

/// Shared objects a runner hands to its services, by type: a database pool, an HTTP
/// client, a repository behind a trait object. Read by [`Dep<T>`](crate::deps::Dep).
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use nameko_core::Resources;
///
/// trait Clock: Send + Sync { fn now(&self) -> u64; }
/// struct Fixed;
/// impl Clock for Fixed { fn now(&self) -> u64 { 42 } }
///
/// let resources = Resources::new().with::<dyn Clock>(Arc::new(Fixed));
/// assert_eq!(resources.get::<dyn Clock>().unwrap().now(), 42);
/// ```
#[derive(Clone, Default)]
pub struct Resources {
    map: HashMap<TypeId, (&'static str, Arc<dyn Any + Send + Sync>)>,
}

impl Resources {
    /// No resources.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a resource of type `T` (often a `dyn Trait`), replacing one of the same type.
    #[must_use]
    pub fn with<T: ?Sized + Send + Sync + 'static>(mut self, value: Arc<T>) -> Self {
        self.insert(value);
        self
    }

    /// Adds a resource of type `T`, replacing one of the same type.
    pub fn insert<T: ?Sized + Send + Sync + 'static>(&mut self, value: Arc<T>) {
        self.map.insert(TypeId::of::<T>(), (type_name::<T>(), Arc::new(value)));
    }

    /// The resource of type `T`.
    pub fn get<T: ?Sized + Send + Sync + 'static>(&self) -> Option<Arc<T>> {
        let (_, any) = self.map.get(&TypeId::of::<T>())?;
        any.downcast_ref::<Arc<T>>().cloned()
    }

    /// Adds every resource of `other`, replacing those of the same type.
    pub fn extend(&mut self, other: Resources) {
        self.map.extend(other.map);
    }
}

impl fmt::Debug for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.map.values().map(|(name, _)| name)).finish()
    }
}

// ===== Shared =====

/// Runner-wide state shared by extensions under a key: one broker connection, one
/// web server, one reply listener for every service of the process (Nameko's
/// `SharedExtension`).
#[derive(Clone, Default)]
pub struct Shared {
    map: Arc<Mutex<HashMap<(TypeId, String), Arc<dyn Any + Send + Sync>>>>,
}

impl Shared {
    /// Returns the value of type `T` stored under `key`, creating it with `init` first.
    pub fn get_or_insert_with<T: Send + Sync + 'static>(&self, key: &str, init: impl FnOnce() -> T) -> Arc<T> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map
            .entry((TypeId::of::<T>(), key.to_owned()))
            .or_insert_with(|| Arc::new(init()) as Arc<dyn Any + Send + Sync>);
        Arc::clone(entry).downcast().expect("entries are keyed by their TypeId")
    }

    /// Returns the value of type `T` stored under `key`, if any.
    pub fn get<T: Send + Sync + 'static>(&self, key: &str) -> Option<Arc<T>> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&(TypeId::of::<T>(), key.to_owned()))
            .and_then(|v| Arc::clone(v).downcast().ok())
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let len = self.map.lock().map(|m| m.len()).unwrap_or_default();
        f.debug_struct("Shared").field("len", &len).finish()
    }
}

// ===== SetupContext =====

/// What an extension sees during `setup`: its service, its field or entrypoint, its
/// arguments, the config, the runner's resources and shared state.
pub struct SetupContext<'a> {
    pub(crate) service: &'static str,
    pub(crate) field: Option<(&'static str, &'static str)>,
    pub(crate) entrypoint: Option<&'a EntrypointInfo>,
    pub(crate) args: &'a [(&'static str, String)],
    pub(crate) config: &'a Config,
    pub(crate) resources: &'a Resources,
    pub(crate) shared: &'a Shared,
    pub(crate) claimed_keys: &'a mut Vec<String>,
    pub(crate) describe: fn() -> ServiceDescription,
}

impl<'a> SetupContext<'a> {
    /// The service being set up.
    pub fn service_name(&self) -> &'static str {
        self.service
    }

    /// For a dependency provider: the name of the field it fills.
    pub fn field_name(&self) -> Option<&'static str> {
        self.field.map(|(name, _)| name)
    }

    /// For a dependency provider: the type of the field it fills.
    pub fn field_type(&self) -> Option<&'static str> {
        self.field.map(|(_, ty)| ty)
    }

    /// For an entrypoint: what it is bound to.
    pub fn entrypoint(&self) -> Option<&EntrypointInfo> {
        self.entrypoint
    }

    /// An argument given to the field's provider, e.g. `key` in
    /// `#[dependency(key = "GREETING")]`.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args.iter().find(|(k, _)| *k == key).map(|(_, v)| v.as_str())
    }

    /// The container's config.
    pub fn config(&self) -> &Config {
        self.config
    }

    /// Records that a top-level config key is read by this service, so the runner does
    /// not warn about it as unknown.
    pub fn claim_config_key(&mut self, key: &str) {
        self.claimed_keys.push(key.to_owned());
    }

    /// The runner's resource of type `T`.
    ///
    /// # Errors
    ///
    /// When none was registered; the error names the service, the field and both types,
    /// and says how to register one.
    pub fn resource<T: ?Sized + Send + Sync + 'static>(&self) -> Result<Arc<T>, SetupError> {
        self.resources.get::<T>().ok_or_else(|| {
            let wanted = type_name::<T>();
            let place = match self.field {
                Some((field, ty)) => format!("service `{}`: field `{field}` ({ty})", self.service),
                None => format!("service `{}`", self.service),
            };
            SetupError::new(format!(
                "{place} needs the resource `{wanted}`, but none was registered; add it with \
                 `ServiceRunner::resource::<{wanted}>(..)` or the CLI's `resources` hook"
            ))
        })
    }

    /// What the service says about itself: its entrypoints with their parameters and
    /// doc lines (the introspection RPC's answer).
    pub fn service_description(&self) -> ServiceDescription {
        (self.describe)()
    }

    /// The runner-wide state shared under `key`.
    pub fn shared(&self) -> &Shared {
        self.shared
    }
}

impl fmt::Debug for SetupContext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SetupContext")
            .field("service", &self.service)
            .field("field", &self.field)
            .field("entrypoint", &self.entrypoint)
            .field("args", &self.args)
            .finish_non_exhaustive()
    }
}
