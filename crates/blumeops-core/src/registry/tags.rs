//! Listing a repository's tags (`GET /v2/<name>/tags/list`), page by page.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, LINK};
use url::Url;

use super::{
    Access, Call, Error, Limit, MAX_MANIFEST_BYTES, Operation, RegistryClient, read_limited,
    status_error,
};
use crate::reference::ImageRef;

/// Most pages followed before giving up (a registry that links to itself forever).
const MAX_PAGES: usize = 100;

#[derive(serde::Deserialize)]
struct TagList {
    #[serde(default)]
    tags: Option<Vec<String>>,
}

impl RegistryClient {
    pub(super) async fn list_tags_impl(&self, reference: &ImageRef) -> Result<Vec<String>, Error> {
        let repo = self.repo(reference, Access::Pull)?;
        let name = format!("{}/{}", repo.registry, repo.repository);
        let mut url = repo.url(&format!("v2/{}/tags/list", repo.repository))?;
        let mut tags = Vec::new();
        for _ in 0..MAX_PAGES {
            let call = Call {
                repo: &repo,
                operation: Operation::ListTags,
                target: &name,
                url: &url,
                limit: Limit::Total(self.options.request_timeout),
            };
            let first = tags.is_empty();
            let page = self
                .retrying(&call, Duration::ZERO, || async {
                    let response = self.send(&call, || Ok(self.http.get(url.clone()))).await?;
                    match response.status() {
                        StatusCode::OK => {}
                        // No such repository (nothing was ever pushed): no tags.
                        StatusCode::NOT_FOUND if first => return Ok(None),
                        _ => return Err(status_error(&call, response).await),
                    }
                    let next = next_page(response.headers(), &url);
                    let body = read_limited(&call, response, MAX_MANIFEST_BYTES).await?;
                    Ok(Some((next, body)))
                })
                .await?;
            let Some((next, body)) = page else {
                return Ok(tags);
            };
            let page: TagList =
                serde_json::from_slice(&body).map_err(|source| Error::InvalidJson {
                    what: "tag list",
                    url: url.to_string(),
                    source,
                })?;
            tags.extend(page.tags.unwrap_or_default());
            match next {
                Some(next) if next != url => url = next,
                _ => break,
            }
        }
        Ok(tags)
    }
}

/// The `rel="next"` target of a `Link` header, resolved against `current`.
fn next_page(headers: &HeaderMap, current: &Url) -> Option<Url> {
    headers
        .get_all(LINK)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|link| {
            let (target, params) = link.split_once(';')?;
            let is_next = params.split(';').any(|p| {
                let p = p.trim().replace(' ', "");
                p == "rel=\"next\"" || p == "rel=next"
            });
            let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
            is_next.then(|| current.join(target).ok()).flatten()
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn link_header_next_page() {
        let current = Url::parse("http://127.0.0.1:5000/v2/blumeops/hello/tags/list").unwrap();
        let mut headers = HeaderMap::new();
        assert_eq!(next_page(&headers, &current), None);
        headers.insert(
            LINK,
            HeaderValue::from_static("</v2/blumeops/hello/tags/list?n=2&last=b>; rel=\"next\""),
        );
        assert_eq!(
            next_page(&headers, &current).unwrap().as_str(),
            "http://127.0.0.1:5000/v2/blumeops/hello/tags/list?n=2&last=b"
        );
        headers.insert(LINK, HeaderValue::from_static("</other>; rel=\"prev\""));
        assert_eq!(next_page(&headers, &current), None);
    }
}
