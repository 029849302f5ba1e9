//! Several platforms in one build: one container per target platform (a Dockerfile's
//! `TARGETARCH` or a definition's input differ per platform), built together within the
//! engine's job slots, and published or written as one OCI image index.

use std::sync::Arc;

use super::Container;
use super::engine::{BuiltImage, Engine, Numbering, Published};
use super::publish::push_images;
use super::solver::Run;
use super::state::finish;
use crate::error::Error;
use crate::export::ExportTarget;
use crate::image::{ImageIndex, ManifestBlob, StoredImage};
use crate::reference::{ImageRef, Platform};
use crate::registry::TagPolicy;

/// One container per target platform, in the order the index lists them.
#[derive(Debug, Clone)]
pub struct MultiPlatform {
    targets: Vec<(Platform, Container)>,
}

/// The images of a multi-platform build and their index, all in the engine's store.
#[derive(Debug, Clone)]
pub struct BuiltIndex {
    /// The OCI image index naming every platform's manifest.
    pub index: ManifestBlob,
    /// Each platform's image, in the index's order.
    pub images: Vec<(Platform, BuiltImage)>,
}

impl BuiltIndex {
    fn stored(&self) -> Vec<StoredImage> {
        self.images.iter().map(|(_, b)| b.image.clone()).collect()
    }
}

impl MultiPlatform {
    /// The containers to build, one per platform: at least one, each platform once.
    pub fn new(targets: Vec<(Platform, Container)>) -> Result<Self, Error> {
        if targets.is_empty() {
            return Err(Error::InvalidPlatforms(
                "no platform to build for".to_owned(),
            ));
        }
        for (i, (platform, _)) in targets.iter().enumerate() {
            if targets[..i].iter().any(|(p, _)| p == platform) {
                return Err(Error::InvalidPlatforms(format!(
                    "{platform} is asked for twice"
                )));
            }
        }
        Ok(Self { targets })
    }

    /// The target platforms, in order.
    pub fn platforms(&self) -> impl Iterator<Item = &Platform> {
        self.targets.iter().map(|(p, _)| p)
    }

    /// Build every platform's image and their index into the store. With a registry
    /// cache, each platform's steps are exported afterwards.
    pub async fn build(&self, engine: &Engine) -> Result<BuiltIndex, Error> {
        let _lock = engine.lock_store().await?;
        let engines = self.engines(engine);
        let runs = self.runs(&engines)?;
        let built = self.evaluate(&runs).await?;
        export_caches(&runs, None).await;
        Ok(built)
    }

    /// Build, then push every platform's image and the index to `target` under `policy`:
    /// blobs, each manifest by digest, then the index under the tag, last (a failure on
    /// the way leaves no tag). Returns `target@index digest`.
    pub async fn publish(
        &self,
        engine: &Engine,
        target: &ImageRef,
        policy: TagPolicy,
    ) -> Result<Published, Error> {
        let _lock = engine.lock_store().await?;
        let engines = self.engines(engine);
        let runs = self.runs(&engines)?;
        let built = self.evaluate(&runs).await?;
        // The first container's credentials (`with_registry_auth`) push; every platform's
        // container comes from one definition.
        let published = push_images(
            engine,
            runs[0].registry(),
            target,
            &built.index,
            &built.stored(),
            policy,
        )
        .await?;
        export_caches(&runs, Some(target)).await;
        Ok(published)
    }

    /// Build, then write every platform's image and the index to `target` (an OCI layout;
    /// a docker archive holds one image and is refused before anything is built).
    pub async fn export(
        &self,
        engine: &Engine,
        target: &ExportTarget,
    ) -> Result<BuiltIndex, Error> {
        target.check_platforms(self.targets.len())?;
        let _lock = engine.lock_store().await?;
        let engines = self.engines(engine);
        let runs = self.runs(&engines)?;
        let built = self.evaluate(&runs).await?;
        let (store, output) = (engine.store.clone(), target.clone());
        let (index, images) = (built.index.clone(), built.stored());
        tokio::task::spawn_blocking(move || {
            crate::export::write_index(&store, &index, &images, &output)
        })
        .await
        .map_err(|_| Error::TaskPanicked)??;
        export_caches(&runs, None).await;
        Ok(built)
    }

    /// One engine per platform: the platform set, and progress numbered after the
    /// platforms before it.
    fn engines(&self, engine: &Engine) -> Vec<Engine> {
        let plans: Vec<_> = self.targets.iter().map(|(_, c)| c.plan()).collect();
        let total = plans.iter().map(|p| p.total_steps).sum();
        let (mut step_offset, mut stage_offset) = (0, 0);
        let step_locks = Arc::default();
        self.targets
            .iter()
            .zip(&plans)
            .map(|((platform, _), plan)| {
                let mut e = engine.for_platform(platform);
                e.numbering = Some(Numbering {
                    platform: platform.to_string(),
                    step_offset,
                    stage_offset,
                    total,
                });
                e.step_locks = Some(Arc::clone(&step_locks));
                step_offset += plan.total_steps;
                stage_offset += plan.stages.len();
                e
            })
            .collect()
    }

    /// One run per platform, each checked (emulators) before any step runs.
    fn runs<'a>(&'a self, engines: &'a [Engine]) -> Result<Vec<Run<'a>>, Error> {
        let mut runs = Vec::with_capacity(engines.len());
        for (engine, (platform, container)) in engines.iter().zip(&self.targets) {
            let run = Run::new(engine, container);
            run.check_platforms()
                .map_err(|e| for_platform(platform, e))?;
            runs.push(run);
        }
        Ok(runs)
    }

    /// Evaluate every platform concurrently; the first failure stops the others.
    async fn evaluate(&self, runs: &[Run<'_>]) -> Result<BuiltIndex, Error> {
        let states = futures_util::future::try_join_all(runs.iter().zip(&self.targets).map(
            |(run, (platform, container))| async move {
                let state = run
                    .evaluate(container)
                    .await
                    .map_err(|e| for_platform(platform, e))?;
                finish(run.engine(), state).map_err(|e| for_platform(platform, e))
            },
        ))
        .await?;
        let images: Vec<(Platform, BuiltImage)> = self.platforms().cloned().zip(states).collect();
        let index =
            ImageIndex::for_platforms(images.iter().map(|(p, b)| (p, &b.image.manifest))).to_blob();
        Ok(BuiltIndex { index, images })
    }
}

fn for_platform(platform: &Platform, source: Error) -> Error {
    Error::ForPlatform {
        platform: platform.to_string(),
        source: Box::new(source),
    }
}

async fn export_caches(runs: &[Run<'_>], mount_from: Option<&ImageRef>) {
    for run in runs {
        run.export_to_registry_cache(mount_from).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::pipeline::{EngineOptions, Event};
    use crate::store::Store;

    fn platform(text: &str) -> Platform {
        text.parse().unwrap()
    }

    /// Two platforms of files only (no command, so no emulator and no root needed).
    fn two_platforms() -> MultiPlatform {
        let targets = ["linux/amd64", "linux/arm64"]
            .map(|p| {
                let c = Container::scratch().with_new_file("/arch", p.as_bytes(), 0o644);
                (platform(p), c)
            })
            .to_vec();
        MultiPlatform::new(targets).unwrap()
    }

    #[test]
    fn a_platform_twice_or_none_is_refused() {
        let c = Container::scratch();
        let err = MultiPlatform::new(vec![
            (platform("linux/arm64"), c.clone()),
            (platform("linux/arm64"), c),
        ])
        .unwrap_err();
        assert!(
            err.to_string().contains("linux/arm64 is asked for twice"),
            "{err}"
        );
        assert_eq!(err.kind(), crate::ErrorKind::InvalidInput);
        assert!(MultiPlatform::new(Vec::new()).is_err());
    }

    #[test]
    fn each_platform_gets_its_image_and_the_index_names_them_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let seen = events.clone();
        let mut options = EngineOptions::new(Store::open(dir.path()).unwrap());
        options.progress = Some(Arc::new(move |e: &Event| {
            if let Event::StepStarted {
                index,
                total,
                stage,
                stage_name,
                platform,
                ..
            } = e
            {
                seen.lock().unwrap().push((
                    *index,
                    *total,
                    *stage,
                    stage_name.clone(),
                    platform.clone(),
                ));
            }
        }));
        let engine = Engine::new(options).unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let built = rt.block_on(two_platforms().build(&engine)).unwrap();

        assert_eq!(built.images.len(), 2);
        for (p, image) in &built.images {
            assert_eq!(image.config.architecture, p.architecture());
            assert_eq!(image.config.os, "linux");
        }
        assert_ne!(
            built.images[0].1.image.manifest.digest,
            built.images[1].1.image.manifest.digest
        );
        let index: serde_json::Value = serde_json::from_slice(&built.index.bytes).unwrap();
        let entries = index["manifests"].as_array().unwrap();
        let listed: Vec<(&str, &str)> = entries
            .iter()
            .map(|e| {
                (
                    e["digest"].as_str().unwrap(),
                    e["platform"]["architecture"].as_str().unwrap(),
                )
            })
            .collect();
        let expected: Vec<(String, &str)> = built
            .images
            .iter()
            .map(|(p, i)| (i.image.manifest.digest.to_string(), p.architecture()))
            .collect();
        assert_eq!(
            listed,
            expected
                .iter()
                .map(|(d, a)| (d.as_str(), *a))
                .collect::<Vec<_>>()
        );

        // Steps numbered across platforms, each naming its platform.
        let mut events = events.lock().unwrap().clone();
        events.sort();
        assert_eq!(events.len(), 4, "{events:?}");
        let numbers: Vec<(usize, usize, usize)> =
            events.iter().map(|(i, t, s, _, _)| (*i, *t, *s)).collect();
        assert_eq!(numbers, [(1, 4, 1), (2, 4, 1), (3, 4, 2), (4, 4, 2)]);
        assert_eq!(events[0].4.as_deref(), Some("linux/amd64"));
        assert_eq!(events[3].4.as_deref(), Some("linux/arm64"));
        assert!(events[3].3.starts_with("linux/arm64 "), "{events:?}");
    }

    #[test]
    fn an_index_export_writes_every_manifest_and_names_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::new(EngineOptions::new(
            Store::open(dir.path().join("store")).unwrap(),
        ))
        .unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let out = dir.path().join("layout");
        let target: ExportTarget = format!("oci:{}", out.display()).parse().unwrap();
        let target = target.named("v1", "r/x:v1");
        let built = rt
            .block_on(two_platforms().export(&engine, &target))
            .unwrap();
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("index.json")).unwrap()).unwrap();
        let root = &index["manifests"][0];
        assert_eq!(root["digest"], built.index.digest.to_string());
        assert_eq!(root["mediaType"], crate::image::media_types::OCI_INDEX);
        assert_eq!(
            root["annotations"][crate::export::REF_NAME_ANNOTATION],
            "v1"
        );
        for (_, image) in &built.images {
            let blob = out
                .join("blobs/sha256")
                .join(image.image.manifest.digest.hex());
            assert_eq!(std::fs::read(blob).unwrap(), image.image.manifest.bytes);
        }
        let archive: ExportTarget =
            format!("docker-archive:{}", dir.path().join("a.tar").display())
                .parse()
                .unwrap();
        let err = rt
            .block_on(two_platforms().export(&engine, &archive))
            .unwrap_err();
        assert!(
            err.to_string().contains("docker archive holds one image"),
            "{err}"
        );
    }

    #[test]
    fn a_stage_on_the_build_platform_runs_once_for_every_target() {
        if !crate::pipeline::eval_tests::can_run() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let ran = Arc::new(Mutex::new(Vec::new()));
        let seen = ran.clone();
        let mut options = EngineOptions::new(Store::open(dir.path()).unwrap());
        options.progress = Some(Arc::new(move |e: &Event| {
            if let Event::StepFinished { index, cache, .. } = e {
                seen.lock().unwrap().push((*index, cache.clone()));
            }
        }));
        let engine = Engine::new(options).unwrap();
        // Like `FROM --platform=$BUILDPLATFORM`: the host's, whatever the target.
        let host = Platform::host();
        let tools = Container::scratch_platform(host.clone())
            .with_file(
                "/bin/busybox",
                "/bin/busybox",
                crate::layer::HostCopy::default().with_mode(0o755),
            )
            .with_exec(["/bin/busybox", "sh", "-c", "echo built > /out"]);
        let other = if host.architecture() == "arm64" {
            "linux/amd64"
        } else {
            "linux/arm64"
        };
        // The targets only copy (no command, so no emulator).
        let targets = [host.clone(), platform(other)]
            .map(|p| {
                let c = Container::scratch().with_file_from(
                    "/out",
                    &tools,
                    "/out",
                    crate::pipeline::CopyOptions::default(),
                );
                (p, c)
            })
            .to_vec();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let built = rt
            .block_on(MultiPlatform::new(targets).unwrap().build(&engine))
            .unwrap();
        assert_eq!(built.images.len(), 2);
        let ran = ran.lock().unwrap().clone();
        let execs_ran = ran
            .iter()
            .filter(|(_, c)| matches!(c, crate::pipeline::CacheStatus::Ran { .. }))
            .count();
        // Per target: scratch, busybox, exec, scratch, copy; the tools stage's file and
        // command ran for the first, the second took them from the cache, and each target's
        // own copy ran.
        let hits = ran
            .iter()
            .filter(|(_, c)| matches!(c, crate::pipeline::CacheStatus::Hit))
            .count();
        assert_eq!(hits, 2, "{ran:?}");
        assert_eq!(execs_ran, 4, "{ran:?}");
    }
}
