//! blumeops-core: build OCI images in steps without a Docker daemon, and publish them to a
//! registry (zot) with API-key auth.
#![deny(missing_docs)]

mod image;
mod reference;
mod registry;
mod secret;
mod store;

pub use image::{BlobRef, ManifestBlob, StoredImage, media_types};
pub use reference::{Digest, DigestWriter, ImageRef, Platform, is_loopback_host};
pub use reference::Error as ReferenceError;
pub use registry::{
    ClientOptions, Credential, Credentials, DEFAULT_MAX_PARALLEL_UPLOADS, ErrorKind, PulledImage,
    PushReport, RegistryClient, TagPolicy,
};
pub use registry::Error as RegistryError;
pub use secret::{ACCEPTED_FORMS as SECRET_FORMS, Secret, SecretSource};
pub use secret::Error as SecretError;
pub use store::{BlobWriter, CACHE_DIR_ENV, Store};
pub use store::Error as StoreError;

pub use oci_spec;
