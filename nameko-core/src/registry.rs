//! Services registered with `inventory`, found by name at run time.
//!
//! `#[nameko::service]` registers each service; by hand, use
//! [`register_service!`](crate::register_service). A library crate holding services
//! must be linked into the binary (`use my_services as _;`), or the linker drops its
//! registrations.

use std::{collections::HashMap, fmt};

use crate::{
    container::{ContainerError, ServiceContainer, Startable},
    service::{Entrypoints, Service},
};

/// One registered service.
pub struct ServiceRegistration {
    name: &'static str,
    module_path: &'static str,
    file: &'static str,
    line: u32,
    builder: fn() -> Box<dyn Startable>,
    entrypoints: fn() -> Vec<(&'static str, &'static str)>,
}

fn builder_of<S: Service>() -> Box<dyn Startable> {
    Box::new(ServiceContainer::builder::<S>())
}

fn entrypoints_of<S: Service>() -> Vec<(&'static str, &'static str)> {
    let mut entrypoints = Entrypoints::<S>::new();
    S::entrypoints(&mut entrypoints);
    entrypoints.infos().collect()
}

impl ServiceRegistration {
    /// Registers `S`, declared at `module_path`, `file` and `line`.
    pub const fn new<S: Service>(module_path: &'static str, file: &'static str, line: u32) -> Self {
        Self {
            name: S::NAME,
            module_path,
            file,
            line,
            builder: builder_of::<S>,
            entrypoints: entrypoints_of::<S>,
        }
    }

    /// The service's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The module that declared it.
    pub fn module_path(&self) -> &'static str {
        self.module_path
    }

    /// `file:line (module path)` of the declaration.
    pub fn location(&self) -> String {
        format!("{}:{} ({})", self.file, self.line, self.module_path)
    }

    /// The source file of the declaration.
    pub fn file(&self) -> &'static str {
        self.file
    }

    /// The line of the declaration.
    pub fn line(&self) -> u32 {
        self.line
    }

    /// The service's entrypoints as `(method, kind)` pairs, in declaration order, known
    /// without starting anything (what `nameko list` prints).
    pub fn entrypoints(&self) -> Vec<(&'static str, &'static str)> {
        (self.entrypoints)()
    }

    pub(crate) fn builder(&self) -> Box<dyn Startable> {
        (self.builder)()
    }
}

impl fmt::Debug for ServiceRegistration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceRegistration")
            .field("name", &self.name)
            .field("location", &self.location())
            .finish()
    }
}

inventory::collect!(ServiceRegistration);

/// Every registered service, sorted by name.
///
/// # Errors
///
/// [`ContainerError::DuplicateService`] when two registrations share a name, naming
/// where each was declared.
pub fn registered_services() -> Result<Vec<&'static ServiceRegistration>, ContainerError> {
    check_unique(inventory::iter::<ServiceRegistration>.into_iter().collect())
}

fn check_unique(
    mut all: Vec<&'static ServiceRegistration>,
) -> Result<Vec<&'static ServiceRegistration>, ContainerError> {
    all.sort_by_key(|r| (r.name, r.file, r.line));
    let mut seen: HashMap<&str, &ServiceRegistration> = HashMap::new();
    for registration in &all {
        if let Some(first) = seen.insert(registration.name, registration) {
            return Err(ContainerError::DuplicateService {
                name: registration.name,
                locations: Some((first.location(), registration.location())),
            });
        }
    }
    Ok(all)
}

/// Registers a service written by hand so [`ServiceRunner::with_registered`] and the
/// CLI find it by name.
///
/// ```ignore
/// nameko_core::register_service!(my_crate::Shop);
/// ```
///
/// [`ServiceRunner::with_registered`]: crate::ServiceRunner::with_registered
#[macro_export]
macro_rules! register_service {
    ($service:ty) => {
        $crate::__private::inventory::submit! {
            $crate::registry::ServiceRegistration::new::<$service>(::core::module_path!(), ::core::file!(), ::core::line!())
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Dependencies, DependencyError, ProviderSlot, Providers, WorkerBuilder, entrypoints::Dummy};

    macro_rules! svc {
        ($ty:ident, $name:literal) => {
            struct $ty;
            impl Providers for $ty {
                type Worker = $ty;
                fn slots(&mut self) -> Vec<(&'static str, &mut dyn ProviderSlot)> {
                    Vec::new()
                }
                async fn build<'a>(&'a self, _: &mut WorkerBuilder<'a>) -> Result<$ty, DependencyError> {
                    Ok($ty)
                }
            }
            impl Dependencies for $ty {
                type Providers = $ty;
                fn providers() -> $ty {
                    $ty
                }
            }
            impl Service for $ty {
                const NAME: &'static str = $name;
                fn entrypoints(e: &mut Entrypoints<Self>) {
                    e.add("ping", Dummy::<(), ()>::new(), |_: $ty, ()| async {
                        Ok::<_, crate::RemoteError>(())
                    });
                }
            }
        };
    }

    svc!(A, "same");
    svc!(B, "same");
    svc!(C, "other");

    static REG_A: ServiceRegistration = ServiceRegistration::new::<A>("crate_a", "a.rs", 1);
    static REG_B: ServiceRegistration = ServiceRegistration::new::<B>("crate_b", "b.rs", 2);
    static REG_C: ServiceRegistration = ServiceRegistration::new::<C>("crate_c", "c.rs", 3);

    #[test]
    fn duplicates_name_both_places() {
        let err = check_unique(vec![&REG_C, &REG_B, &REG_A]).unwrap_err().to_string();
        assert!(err.contains("two services are named `same`"), "{err}");
        assert!(
            err.contains("a.rs:1 (crate_a)") && err.contains("b.rs:2 (crate_b)"),
            "{err}"
        );
    }

    #[test]
    fn entrypoints_known_without_starting() {
        assert_eq!(REG_C.entrypoints(), [("ping", "dummy")]);
        assert_eq!((REG_C.file(), REG_C.line()), ("c.rs", 3));
    }

    #[test]
    fn sorted_by_name() {
        let names: Vec<_> = check_unique(vec![&REG_A, &REG_C])
            .unwrap()
            .iter()
            .map(|r| r.name())
            .collect();
        assert_eq!(names, ["other", "same"]);
    }
}
