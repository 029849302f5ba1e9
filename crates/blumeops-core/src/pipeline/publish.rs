//! Building, exporting and publishing a `Container`, and reading results out of it.

use std::path::Path;
use std::time::Instant;

use super::Container;
use super::engine::{BuiltImage, Engine, Event, Published};
use super::solver::Run;
use super::state::finish;
use super::steps;
use crate::error::Error;
use crate::export::ExportTarget;
use crate::image::{ManifestBlob, StoredImage};
use crate::reference::ImageRef;
use crate::registry::TagPolicy;

impl Container {
    /// Evaluate every step and assemble the image in the engine's store. The digest is
    /// known when this returns, before any upload.
    /// With a registry cache, the steps and volumes it lacks are exported afterwards.
    pub async fn build(&self, engine: &Engine) -> Result<BuiltImage, Error> {
        let _lock = engine.lock_store().await?;
        let run = Run::new(engine, self);
        run.check_platforms()?;
        let built = finish(engine, run.evaluate(self).await?)?;
        run.export_to_registry_cache(None).await;
        Ok(built)
    }

    /// Evaluate the container and return the stdout of its last `with_exec` step.
    pub async fn stdout(&self, engine: &Engine) -> Result<String, Error> {
        let _lock = engine.lock_store().await?;
        let state = Run::new(engine, self).evaluate(self).await?;
        let path = state.last_stdout.ok_or(Error::NoExec)?;
        let bytes = tokio::fs::read(&path).await.map_err(|source| Error::Io {
            action: "read",
            path: path.clone(),
            source,
        })?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Evaluate the container and read the file at `path` from its filesystem.
    pub async fn file(&self, engine: &Engine, path: &str) -> Result<Vec<u8>, Error> {
        let _lock = engine.lock_store().await?;
        let state = Run::new(engine, self).evaluate(self).await?;
        let view = crate::layer::RootfsView::new(steps::lowers(engine, &state).await?);
        let path_owned = path.to_owned();
        tokio::task::spawn_blocking(move || view.read_file(&path_owned))
            .await
            .map_err(|_| Error::TaskPanicked)??
            .ok_or_else(|| Error::NotFoundInImage {
                path: path.to_owned(),
            })
    }

    /// Evaluate the container and copy the directory at `path` out of its filesystem into
    /// the host directory `dest` (created; owners are kept when running as root).
    pub async fn directory(&self, engine: &Engine, path: &str, dest: &Path) -> Result<(), Error> {
        let _lock = engine.lock_store().await?;
        let state = Run::new(engine, self).evaluate(self).await?;
        let view = crate::layer::RootfsView::new(steps::lowers(engine, &state).await?);
        let (path, dest) = (path.to_owned(), dest.to_owned());
        tokio::task::spawn_blocking(move || steps::export_directory(&view, &path, &dest))
            .await
            .map_err(|_| Error::TaskPanicked)?
    }

    /// Build, then push to `target` under `policy`. Returns `target@digest`.
    pub async fn publish(
        &self,
        engine: &Engine,
        target: &ImageRef,
        policy: TagPolicy,
    ) -> Result<Published, Error> {
        // Held from the build through the push, so no pruning removes blobs in between.
        let _lock = engine.lock_store().await?;
        let run = Run::new(engine, self);
        run.check_platforms()?;
        let built = finish(engine, run.evaluate(self).await?)?;
        let published = push_built(engine, run.registry(), &built, target, policy).await?;
        // After the push, so the cache's entries mount the image's layers.
        run.export_to_registry_cache(Some(target)).await;
        Ok(published)
    }

    /// Build, then write the image to `target` (an OCI layout or a docker archive).
    pub async fn export(
        &self,
        engine: &Engine,
        target: &ExportTarget,
    ) -> Result<BuiltImage, Error> {
        let _lock = engine.lock_store().await?;
        let run = Run::new(engine, self);
        run.check_platforms()?;
        let built = finish(engine, run.evaluate(self).await?)?;
        let store = engine.store.clone();
        let image = built.image.clone();
        let output = target.clone();
        tokio::task::spawn_blocking(move || crate::export::write(&store, &image, &output))
            .await
            .map_err(|_| Error::TaskPanicked)??;
        run.export_to_registry_cache(None).await;
        Ok(built)
    }
}

/// Push an already built image.
pub(crate) async fn push_built(
    engine: &Engine,
    registry: &crate::registry::RegistryClient,
    built: &BuiltImage,
    target: &ImageRef,
    policy: TagPolicy,
) -> Result<Published, Error> {
    let image = std::slice::from_ref(&built.image);
    push_images(
        engine,
        registry,
        target,
        &built.image.manifest,
        image,
        policy,
    )
    .await
}

/// Push `images` and `root` (one of their manifests, or their index) to `target`, with
/// progress events. Returns `target@digest of root`.
pub(super) async fn push_images(
    engine: &Engine,
    registry: &crate::registry::RegistryClient,
    target: &ImageRef,
    root: &ManifestBlob,
    images: &[StoredImage],
    policy: TagPolicy,
) -> Result<Published, Error> {
    engine.emit(Event::PushStarted {
        target: target.to_string(),
    });
    let started = Instant::now();
    let progress = |p: &crate::registry::BlobProgress| {
        engine.emit(Event::PushProgress {
            done: p.done,
            total: p.total,
            uploaded: p.uploaded,
            bytes_sent: p.bytes_sent,
        });
    };
    let report = registry
        .push_images_with_progress(target, root, images, &engine.store, policy, &progress)
        .await?;
    engine.emit(Event::PushFinished {
        report: report.clone(),
        elapsed: started.elapsed(),
    });
    Ok(Published {
        reference: target.with_digest(report.digest.clone()),
        report,
    })
}
