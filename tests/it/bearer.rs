//! The registry client's Bearer token flow against a real distribution registry with token
//! auth: the registry checks every JWT (signature, `x5c` chain, issuer, audience, expiry,
//! granted actions) issued by the harness' token server.

use blumeops_core::{
    ImageRef, Platform, RegistryClient, RegistryError, RegistryErrorKind, Store, StoredImage,
    TagPolicy,
};
use blumeops_e2e::sha256_digest;
use blumeops_e2e::token_auth::{
    PULL_USER, PUSH_USER, TokenRegistry, TokenRequest, untrusted_token,
};
use blumeops_e2e::tools::skopeo;

use crate::test_images::{assert_blobs_verified, build_image, client_for, store};

const REPO: &str = "blumeops/hello";

fn client(registry: &TokenRegistry, user: Option<(&str, &str)>) -> RegistryClient {
    client_for(&registry.addr(), user)
}

fn pusher(registry: &TokenRegistry) -> RegistryClient {
    client(registry, Some((PUSH_USER, registry.pusher_password())))
}

fn reference(registry: &TokenRegistry, tag: &str) -> ImageRef {
    format!("{}/{REPO}:{tag}", registry.addr())
        .parse()
        .expect("valid reference")
}

fn push(
    registry: &TokenRegistry,
    client: &RegistryClient,
    tag: &str,
    image: &StoredImage,
    store: &Store,
) -> Result<blumeops_core::PushReport, RegistryError> {
    let target = reference(registry, tag);
    registry.block_on(client.push_image(&target, image, store, TagPolicy::CreateOnly))
}

/// `skopeo inspect --raw` with these arguments; the manifest bytes, or stderr on failure.
fn skopeo_raw(registry: &TokenRegistry, tag: &str, creds: Option<&str>) -> Result<Vec<u8>, String> {
    let reference = format!("docker://{}/{REPO}:{tag}", registry.addr());
    let mut args = vec!["inspect", "--raw", "--tls-verify=false", "--retry-times=0"];
    if let Some(creds) = creds {
        args.extend(["--creds", creds]);
    }
    args.push(&reference);
    let output = skopeo(&args);
    if output.status.success() {
        Ok(output.stdout)
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

fn token_log(registry: &TokenRegistry) -> String {
    registry
        .token_requests()
        .iter()
        .map(|r| format!("{r:?}\n"))
        .collect()
}

/// GET the manifest of `REPO:tag` with `Authorization: Bearer token`; the status.
fn get_with_token(registry: &TokenRegistry, tag: &str, token: &str) -> u16 {
    let http = registry.http_client();
    let url = format!("{}/v2/{REPO}/manifests/{tag}", registry.url());
    registry.block_on(async {
        http.get(url)
            .bearer_auth(token)
            .header("accept", blumeops_core::media_types::MANIFEST_ACCEPT)
            .send()
            .await
            .expect("GET manifest")
            .status()
            .as_u16()
    })
}

#[test]
fn push_with_credentials_uses_a_push_token_the_registry_accepts() {
    let registry = TokenRegistry::start();
    let (_dir, store) = store();
    let image = build_image(&store, "bearer", "amd64");
    let report = push(&registry, &pusher(&registry), "v1", &image, &store).unwrap_or_else(|e| {
        panic!(
            "push failed: {e}\ntokens:\n{}registry:\n{}",
            token_log(&registry),
            registry.registry_log()
        )
    });
    assert!(!report.unchanged);
    assert_eq!((report.blobs_uploaded, report.blobs_skipped), (3, 0));

    // One token for the whole push, asked with the credentials for pull,push and granted.
    let scope = format!("repository:{REPO}:pull,push");
    assert_eq!(
        registry.token_requests(),
        [TokenRequest {
            had_auth: true,
            user: Some(PUSH_USER.to_owned()),
            service: Some(blumeops_e2e::token_auth::TOKEN_SERVICE.to_owned()),
            scopes: vec![scope.clone()],
            granted: vec![scope],
            status: 200,
        }],
    );

    // skopeo, through the same token flow, sees the pushed manifest.
    let creds = format!("{PUSH_USER}:{}", registry.pusher_password());
    let raw = skopeo_raw(&registry, "v1", Some(&creds)).expect("skopeo inspect with creds");
    assert_eq!(raw, image.manifest.bytes);
    assert_eq!(sha256_digest(&raw), report.digest.to_string());

    // The registry checks tokens itself: a genuine one works, garbage and a token signed by
    // an untrusted key do not.
    let genuine = registry.mint_token(PULL_USER, REPO, &["pull"]);
    assert_eq!(get_with_token(&registry, "v1", &genuine), 200);
    assert_eq!(get_with_token(&registry, "v1", "not-a-jwt"), 401);
    let forged = untrusted_token(PUSH_USER, REPO, &["pull", "push"]);
    assert_eq!(get_with_token(&registry, "v1", &forged), 401);
    let other_repo = registry.mint_token(PULL_USER, "other/repo", &["pull"]);
    assert_eq!(get_with_token(&registry, "v1", &other_repo), 401);

    // Pushing the same image again: the tag check alone, nothing written.
    let report = push(&registry, &pusher(&registry), "v1", &image, &store).expect("re-push");
    assert!(report.unchanged);
}

#[test]
fn anonymous_pull_gets_a_pull_only_token() {
    let registry = TokenRegistry::start();
    let (_dir, source) = store();
    let image = build_image(&source, "bearer", "amd64");
    push(&registry, &pusher(&registry), "v1", &image, &source).expect("push");
    registry.clear_token_log();

    let (_dir2, dest) = store();
    let anonymous = client(&registry, None);
    let platform: Platform = "linux/amd64".parse().expect("platform");
    let pulled = registry
        .block_on(anonymous.pull_image(&reference(&registry, "v1"), &platform, &dest))
        .unwrap_or_else(|e| panic!("pull failed: {e}\ntokens:\n{}", token_log(&registry)));
    assert_eq!(pulled.image, image);
    assert_blobs_verified(&dest, &image);

    // One anonymous token, cached for every blob, granting pull only.
    let pull_scope = format!("repository:{REPO}:pull");
    let requests = registry.token_requests();
    assert_eq!(requests.len(), 1, "{}", token_log(&registry));
    assert!(!requests[0].had_auth && requests[0].user.is_none());
    assert_eq!(requests[0].scopes, std::slice::from_ref(&pull_scope));
    assert_eq!(requests[0].granted, std::slice::from_ref(&pull_scope));

    // skopeo reads anonymously too.
    assert_eq!(
        skopeo_raw(&registry, "v1", None).expect("anonymous skopeo inspect"),
        image.manifest.bytes
    );

    // Without credentials a push gets a pull-only token and fails at the first write.
    registry.clear_token_log();
    let other = build_image(&source, "other", "amd64");
    let err = push(&registry, &anonymous, "v2", &other, &source)
        .expect_err("an anonymous push must fail");
    assert_eq!(err.kind(), RegistryErrorKind::Unauthorized, "{err}");
    assert!(
        err.to_string().contains("authentication is required"),
        "{err}"
    );
    let requests = registry.token_requests();
    assert!(!requests.is_empty(), "{}", token_log(&registry));
    for r in &requests {
        assert!(!r.had_auth, "{r:?}");
        assert_eq!(r.scopes, [format!("repository:{REPO}:pull,push")]);
        assert_eq!(r.granted, std::slice::from_ref(&pull_scope));
    }
    let creds = format!("{PUSH_USER}:{}", registry.pusher_password());
    assert!(
        skopeo_raw(&registry, "v2", Some(&creds)).is_err(),
        "v2 must not exist"
    );
}

#[test]
fn wrong_password_at_the_token_endpoint_is_unauthorized() {
    let registry = TokenRegistry::start();
    let (_dir, store) = store();
    let image = build_image(&store, "bearer", "amd64");
    let wrong = "wrong-password-0123456789";
    let err = push(
        &registry,
        &client(&registry, Some((PUSH_USER, wrong))),
        "v1",
        &image,
        &store,
    )
    .expect_err("a wrong password must fail");
    assert_eq!(err.kind(), RegistryErrorKind::Unauthorized, "{err}");
    let display = err.to_string();
    for want in [registry.addr().as_str(), PUSH_USER, "401 Unauthorized"] {
        assert!(display.contains(want), "{display} lacks {want}");
    }
    let shown = format!("{err} {err:?} {:?}", err.hint());
    assert!(!shown.contains(wrong), "password leaked: {shown}");
    for secret in registry.secrets() {
        assert!(!shown.contains(secret), "a secret leaked: {shown}");
    }
    // The token server refused once; the client did not retry with the same credentials.
    let requests = registry.token_requests();
    assert_eq!(requests.len(), 1, "{}", token_log(&registry));
    assert!(requests[0].had_auth && requests[0].user.is_none());
    assert_eq!(requests[0].status, 401);

    // skopeo agrees the credentials are wrong, and nothing was pushed.
    let creds = format!("{PUSH_USER}:{wrong}");
    assert!(skopeo_raw(&registry, "v1", Some(&creds)).is_err());
    let head = registry
        .block_on(client(&registry, None).head_manifest(&reference(&registry, "v1")))
        .expect("anonymous HEAD");
    assert_eq!(head, None);
}

#[test]
fn pull_only_account_cannot_push() {
    let registry = TokenRegistry::start();
    let (_dir, store) = store();
    let image = build_image(&store, "bearer", "amd64");
    let puller = client(&registry, Some((PULL_USER, registry.puller_password())));
    let err = push(&registry, &puller, "v1", &image, &store)
        .expect_err("a pull-only account must not push");
    // distribution answers an insufficient scope with 401 (`error="insufficient_scope"`).
    assert!(
        matches!(
            err.kind(),
            RegistryErrorKind::Unauthorized | RegistryErrorKind::Denied
        ),
        "{err}"
    );
    assert!(err.to_string().contains(PULL_USER), "{err}");
    let shown = format!("{err} {err:?} {:?}", err.hint());
    assert!(!shown.contains(registry.puller_password()), "{shown}");
    // Tokens were asked with the credentials and granted pull only.
    for r in registry.token_requests() {
        assert_eq!(r.user.as_deref(), Some(PULL_USER), "{r:?}");
        assert_eq!(r.granted, [format!("repository:{REPO}:pull")], "{r:?}");
    }
    let head = registry
        .block_on(puller.head_manifest(&reference(&registry, "v1")))
        .expect("HEAD with a pull token");
    assert_eq!(head, None);
}
