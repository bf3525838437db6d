//! The query string: percent-decoding and the typed options of LIST, WATCH, writes and DELETE.

use std::time::Duration;

use crate::error::ApiError;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::store::ListOptions;

/// Decoded `key=value` pairs, in order.
#[derive(Debug, Clone, Default)]
pub struct Query(Vec<(String, String)>);

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Query {
    pub fn parse(raw: Option<&str>) -> Self {
        Query(
            raw.unwrap_or_default()
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| match p.split_once('=') {
                    Some((k, v)) => (decode(k), decode(v)),
                    None => (decode(p), String::new()),
                })
                .collect(),
        )
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1" | "True"))
    }

    pub fn watch(&self) -> bool {
        self.flag("watch")
    }

    pub fn bookmarks(&self) -> bool {
        self.flag("allowWatchBookmarks")
    }

    pub fn send_initial_events(&self) -> bool {
        self.flag("sendInitialEvents")
    }

    pub fn dry_run(&self) -> bool {
        self.get("dryRun") == Some("All")
    }

    pub fn timeout(&self) -> Result<Option<Duration>, ApiError> {
        match self.get("timeoutSeconds") {
            None | Some("") => Ok(None),
            Some(s) => s
                .parse::<u64>()
                .map(|n| Some(Duration::from_secs(n)))
                .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds: {s:?}"))),
        }
    }

    pub fn labels(&self) -> Result<LabelSelector, ApiError> {
        LabelSelector::parse(self.get("labelSelector").unwrap_or_default()).map_err(ApiError::bad_request)
    }

    pub fn fields(&self, extra: &[&str]) -> Result<FieldSelector, ApiError> {
        FieldSelector::parse(self.get("fieldSelector").unwrap_or_default(), extra).map_err(ApiError::bad_request)
    }

    pub fn list_options(&self, extra: &[&str]) -> Result<ListOptions, ApiError> {
        let limit = match self.get("limit") {
            None | Some("") => None,
            Some(s) => Some(
                s.parse::<usize>()
                    .map_err(|_| ApiError::bad_request(format!("invalid limit: {s:?}")))?,
            ),
        };
        let non_empty = |k: &str| self.get(k).filter(|v| !v.is_empty()).map(str::to_owned);
        Ok(ListOptions {
            labels: self.labels()?,
            fields: self.fields(extra)?,
            limit,
            continue_token: non_empty("continue"),
            resource_version: non_empty("resourceVersion"),
            resource_version_match: non_empty("resourceVersionMatch"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_selectors() {
        let q = Query::parse(Some(
            "labelSelector=app%20in%20(a%2Cb)&watch=1&x&fieldSelector=metadata.name%3Dn+1&bad=%zz%4",
        ));
        assert_eq!(q.get("labelSelector"), Some("app in (a,b)"));
        assert!(q.watch());
        assert_eq!(q.get("x"), Some(""));
        assert_eq!(q.get("fieldSelector"), Some("metadata.name=n 1"));
        assert_eq!(q.get("bad"), Some("%zz%4"));
        assert!(Query::parse(Some("limit=x")).list_options(&[]).is_err());
    }
}
