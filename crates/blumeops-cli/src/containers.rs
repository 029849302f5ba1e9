//! The natively defined containers this binary knows.

use blumeops_core::ContainerDefinition;

/// Every native definition, by name.
pub fn native() -> Vec<&'static dyn ContainerDefinition> {
    vec![
        &blumeops_container_blumeops_engine::Engine,
        &blumeops_container_hello::Hello,
        &blumeops_container_navidrome::Navidrome,
    ]
}

/// The native definition called `name`.
pub fn find(name: &str) -> Option<&'static dyn ContainerDefinition> {
    native().into_iter().find(|d| d.name() == name)
}
