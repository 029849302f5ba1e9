//! blumeops-core: build OCI images in steps without a Docker daemon, and publish them to a
//! registry (zot) with API-key auth.
//!
//! ```no_run
//! use blumeops_core::{Container, Engine, EngineOptions, ImageRef, Store, TagPolicy};
//!
//! # async fn run() -> Result<(), blumeops_core::Error> {
//! let engine = Engine::new(EngineOptions::new(Store::open_default()?))?;
//! let hello = Container::from("docker.io/library/busybox:1.37")
//!     .with_new_file("/usr/local/bin/hello", "#!/bin/sh\necho hello\n", 0o755)
//!     .with_default_args(["/usr/local/bin/hello"]);
//! let target: ImageRef = "registry.ops.eblu.me/blumeops/hello:v1.0.0".parse()?;
//! let published = hello.publish(&engine, &target, TagPolicy::CreateOnly).await?;
//! println!("{published}");
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod definition;
mod dockerfile;
mod epoch;
mod error;
pub mod executor;
mod export;
mod fields;
mod image;
mod import;
mod layer;
pub mod limits;
mod pipeline;
mod reference;
mod registry;
mod registry_cache;
mod sandbox;
mod secret;
mod store;
#[doc(hidden)]
pub mod testing;

pub use definition::Error as DefinitionError;
pub use definition::{
    BuildArgs, ContainerDefinition, DefinitionInput, file_container_names, file_container_version,
    normalize_version,
};
pub use dockerfile::Error as DockerfileError;
pub use dockerfile::{
    Loaded as LoadedDockerfile, load as load_dockerfile,
    load_for_platform as load_dockerfile_for_platform, translate as translate_dockerfile,
    translate_for_platform as translate_dockerfile_for_platform,
};
pub use epoch::Error as EpochError;
pub use epoch::{
    EpochSource, SOURCE_DATE_EPOCH, resolve as resolve_epoch, resolve_for as resolve_epoch_for,
    rfc3339,
};
pub use error::{Error, ErrorKind};
pub use export::Error as ExportError;
pub use export::{ExportTarget, REF_NAME_ANNOTATION};
pub use image::{
    BlobRef, Descriptor, DescriptorPlatform, History, ImageConfig, ImageIndex, ImageManifest,
    ManifestBlob, RootFs, RuntimeConfig, StoredImage, media_types,
};
pub use import::Error as ImportError;
pub use import::{
    ImportOptions, MAX_METADATA_BYTES as MAX_IMPORT_METADATA_BYTES, import_docker_archive,
    import_docker_archive_with,
};
pub use layer::Error as LayerError;
pub use layer::{
    Compression, Entry, EntryKind, FileData, GZIP_LEVEL, HostCopy, Layer, LayerBuilder, Owner,
    ZSTD_LEVEL, normalize_path,
};
pub use layer::{
    DEFAULT_MAX_UNPACK_BYTES, EntryMeta, OverlayXattrs, UnpackOptions, UnpackStats,
    layer_from_overlay_upper, unpack_layer,
};
pub use layer::{FileDigestCache, Fingerprint};
pub use pipeline::Healthcheck;
pub use pipeline::{
    BuiltImage, BuiltIndex, CacheOptions, CacheStatus, CacheVolume, Container, CopyOptions, Engine,
    EngineOptions, Event, ExecOptions, Expect, MountOptions, MultiPlatform, Network, Plan,
    PlanBase, PlanStage, PlanStep, ProgressFn, Published, SecretFileOptions, SecretVariable,
    default_jobs,
};
pub use reference::Error as ReferenceError;
pub use reference::{Digest, DigestWriter, ImageRef, Platform, is_loopback_host};
pub use registry::Error as RegistryError;
pub use registry::ErrorKind as RegistryErrorKind;
pub use registry::Operation as RegistryOperation;
pub use registry::ServerError as RegistryServerError;
pub use registry::{
    BLOB_STALL_TIMEOUT, BlobProgress, CONNECT_TIMEOUT, CertificateProblem, ClientOptions,
    Credential, Credentials, DEFAULT_MAX_PARALLEL_DOWNLOADS, DEFAULT_MAX_PARALLEL_UPLOADS,
    DEFAULT_REQUEST_TIMEOUT, DEFAULT_UPLOAD_CHUNK_SIZE, MAX_RETRY_AFTER, MirrorFailure, MirrorFlag,
    Mirrors, PulledImage, PushReport, REGISTRIES_CONF_ENV, RegistriesConf, RegistryClient,
    RetryPolicy, SYSTEM_REGISTRIES_CONF, SYSTEM_REGISTRIES_CONF_DIR, TagPolicy,
};
pub use registry_cache::{
    DEFAULT_VOLUME_MAX_BYTES, RegistryCacheOptions, RemoteUsage, registry_cache_usage,
};
pub use sandbox::Error as SandboxError;
pub use sandbox::{
    BindMount, CancelToken, DEFAULT_HOSTNAME, DEFAULT_PATH, DEFAULT_PIDS_MAX,
    Requirement as SandboxRequirement, RunOutcome, RunSpec, SetupStep as SandboxSetupStep, Stream,
    TAIL_LINES, TmpfsMount, check_support as check_sandbox_support, run as run_sandboxed,
};
pub use secret::Error as SecretError;
pub use secret::{
    ACCEPTED_FORMS as SECRET_FORMS, BUILD_SECRET_FORMS, BuildSecret, Secret, SecretSource,
};
pub use store::Error as StoreError;
pub use store::{
    BlobWriter, CACHE_DIR_ENV, FileDigestTable, PrunePolicy, PruneReport, Store, StoreLock, Usage,
    human_size, parse_age, parse_size,
};

pub use oci_spec;
