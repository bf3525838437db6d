//! Creating, updating and deleting whole objects, with the API server's rules: body checks (kind, name,
//! namespace), optimistic concurrency, system metadata (uid, creationTimestamp, generation), the `/status`
//! split, finalizers, and the few defaults of the built-in kinds that clients rely on (`kinds.rs`).

use serde_json::{Value, json};

use crate::error::ApiError;
use crate::kinds;
use crate::meta;
use crate::resources::{ResourceType, api_version};
use crate::schema;
use crate::selectors;
use crate::store::{EventKind, ObjKey, Store};

/// Which part of an object a write addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subresource {
    /// The object: `.status` is left alone when the type has a status subresource.
    Main,
    /// `/status`: only `.status` changes.
    Status,
}

/// `fieldValidation`: what to do with fields a custom resource's schema does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FieldValidation {
    /// Drop them silently.
    Ignore,
    /// Drop them and say so in a `Warning` header (the server's default).
    #[default]
    Warn,
    /// Refuse the request (400).
    Strict,
}

/// The options of a create, update, patch or apply.
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteOptions {
    pub dry_run: bool,
    pub validation: FieldValidation,
}

const MODIFIED: &str = "the object has been modified; please apply your changes to the latest version and try again";

fn meta_str<'a>(o: &'a Value, field: &str) -> &'a str {
    o["metadata"][field].as_str().unwrap_or_default()
}

/// The object without `metadata.resourceVersion` (two writes that differ only there are the same write).
fn without_rv(o: &Value) -> Value {
    let mut o = o.clone();
    if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
    o
}

/// What `generation` counts: everything but metadata (and status, when status is a subresource).
fn generation_part(t: &ResourceType, o: &Value) -> Value {
    let mut o = o.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("metadata");
        m.remove("apiVersion");
        m.remove("kind");
        if t.status_subresource {
            m.remove("status");
        }
    }
    o
}

impl Store {
    /// GET: the stored object or 404.
    pub fn get_object(&self, t: &ResourceType, ns: &str, name: &str) -> Result<Value, ApiError> {
        self.get(&t.key(), &(ns.to_owned(), name.to_owned()))
            .cloned()
            .ok_or_else(|| ApiError::not_found(&t.group, &t.plural, name))
    }

    /// Checks what every write body must satisfy and normalizes `apiVersion` and `metadata.namespace`.
    fn check_body(&self, t: &ResourceType, ns: &str, body: &mut Value) -> Result<(), ApiError> {
        let Some(o) = body.as_object_mut() else {
            return Err(ApiError::bad_request(
                "the body of the request was in an unknown format: expected a JSON object",
            ));
        };
        match o.get("kind").and_then(Value::as_str) {
            Some(k) if k == t.kind => {}
            Some(k) => {
                return Err(ApiError::bad_request(format!(
                    "the kind in the body ({k}) does not match the kind of the resource ({})",
                    t.kind
                )));
            }
            None => return Err(ApiError::bad_request("Object 'Kind' is missing in the request body")),
        }
        match o.get("apiVersion").and_then(Value::as_str) {
            Some(av) if t.versions.iter().any(|v| api_version(&t.group, v) == av) => {}
            Some(av) => {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({av}) does not match the expected API version ({})",
                    api_version(&t.group, t.storage_version())
                )));
            }
            None => {
                return Err(ApiError::bad_request(
                    "Object 'apiVersion' is missing in the request body",
                ));
            }
        }
        o.insert(
            "apiVersion".to_owned(),
            json!(api_version(&t.group, t.storage_version())),
        );
        let m = o.entry("metadata").or_insert_with(|| json!({}));
        let Some(m) = m.as_object_mut() else {
            return Err(ApiError::bad_request("metadata must be an object"));
        };
        if t.namespaced {
            match m.get("namespace").and_then(Value::as_str) {
                Some(n) if !n.is_empty() && n != ns => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                _ => {
                    m.insert("namespace".to_owned(), json!(ns));
                }
            }
        } else {
            m.remove("namespace");
        }
        m.remove("managedFields");
        m.remove("selfLink");
        Ok(())
    }

    fn check_labels(t: &ResourceType, name: &str, o: &Value) -> Result<(), ApiError> {
        let Some(labels) = o["metadata"].get("labels") else {
            return Ok(());
        };
        let Some(labels) = labels.as_object() else {
            return Err(invalid(
                t,
                name,
                "metadata.labels",
                "Invalid value: must be a map of strings".to_owned(),
            ));
        };
        for (k, v) in labels {
            if !selectors::valid_key(k) {
                return Err(invalid(
                    t,
                    name,
                    "metadata.labels",
                    format!(
                        "Invalid value: {k:?}: name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
                    ),
                ));
            }
            if !v.as_str().is_some_and(selectors::valid_value) {
                return Err(invalid(
                    t,
                    name,
                    "metadata.labels",
                    format!(
                        "Invalid value: {v}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Prunes and validates a custom resource against its CRD's schema (built-in kinds have none here).
    fn check_schema(
        &mut self,
        t: &ResourceType,
        name: &str,
        o: &mut Value,
        opts: &WriteOptions,
    ) -> Result<(), ApiError> {
        let Some(schema) = &t.schema else { return Ok(()) };
        let pruned = schema::prune_object(schema, o);
        if !pruned.is_empty() {
            let fields: Vec<String> = pruned.iter().map(|p| format!("unknown field \"{p}\"")).collect();
            match opts.validation {
                FieldValidation::Strict => {
                    return Err(ApiError::bad_request(format!(
                        "strict decoding error: {}",
                        fields.join(", ")
                    )));
                }
                FieldValidation::Warn => self.warnings.extend(fields),
                FieldValidation::Ignore => {}
            }
        }
        let errs = schema::validate_object(schema, o);
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ApiError::invalid(&t.kind, &t.group, name, &errs))
        }
    }

    /// POST: a new object (201); `generateName` picks the name; 409 when it exists.
    pub fn create(
        &mut self,
        t: &ResourceType,
        ns: &str,
        mut body: Value,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        self.check_body(t, ns, &mut body)?;
        if !meta_str(&body, "resourceVersion").is_empty() {
            return Err(ApiError::internal(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        let mut name = meta_str(&body, "name").to_owned();
        if name.is_empty() {
            let prefix = meta_str(&body, "generateName");
            if prefix.is_empty() {
                return Err(invalid(
                    t,
                    "",
                    "metadata.name",
                    "Required value: name or generateName is required".to_owned(),
                ));
            }
            name = format!("{prefix}{}", meta::name_suffix());
            body["metadata"]["name"] = json!(name);
        }
        if let Some(problem) = meta::check_name(&name, kinds::name_rule(t)) {
            return Err(invalid(t, &name, "metadata.name", problem));
        }
        Self::check_labels(t, &name, &body)?;
        if t.namespaced
            && self
                .get(
                    &("".to_owned(), "namespaces".to_owned()),
                    &("".to_owned(), ns.to_owned()),
                )
                .is_none()
        {
            return Err(ApiError::not_found("", "namespaces", ns));
        }
        let key = t.key();
        let obj: ObjKey = (if t.namespaced { ns.to_owned() } else { String::new() }, name.clone());
        if self.get(&key, &obj).is_some() {
            return Err(ApiError::already_exists(&t.group, &t.plural, &name));
        }
        let m = body["metadata"]
            .as_object_mut()
            .ok_or_else(|| ApiError::internal("metadata vanished"))?;
        for f in ["deletionTimestamp", "deletionGracePeriodSeconds", "resourceVersion"] {
            m.remove(f);
        }
        m.insert("uid".to_owned(), json!(meta::new_uid()));
        m.insert("creationTimestamp".to_owned(), json!(meta::now()));
        m.insert("generation".to_owned(), json!(1));
        if t.status_subresource
            && let Some(o) = body.as_object_mut()
        {
            o.remove("status");
        }
        self.check_schema(t, &name, &mut body, opts)?;
        let defined = kinds::admit(self, t, &mut body, None)
            .map_err(|causes| ApiError::invalid(&t.kind, &t.group, &name, &causes))?;
        if opts.dry_run {
            return Ok(body);
        }
        let out = self.commit(&key, obj, EventKind::Added, body, None);
        if let Some(d) = defined {
            self.registry.register(d);
        }
        Ok(out)
    }

    /// PUT: replaces the object (or, with `Subresource::Status`, its status); a stale `resourceVersion` is 409.
    pub fn update(
        &mut self,
        t: &ResourceType,
        ns: &str,
        name: &str,
        body: Value,
        sub: Subresource,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        let old = self.get_object(t, ns, name)?;
        self.finish_update(t, ns, name, old, body, sub, opts)
    }

    /// PATCH and apply: `f` computes the new object from the stored one (`None`: it does not exist, and `f` may
    /// return an object to create, as server-side apply does). Returns the result and whether it was created.
    pub fn modify(
        &mut self,
        t: &ResourceType,
        ns: &str,
        name: &str,
        sub: Subresource,
        opts: &WriteOptions,
        f: impl FnOnce(&Store, Option<&Value>) -> Result<Value, ApiError>,
    ) -> Result<(Value, bool), ApiError> {
        let old = self.get(&t.key(), &(ns.to_owned(), name.to_owned())).cloned();
        let new = f(self, old.as_ref())?;
        match old {
            None => self.create(t, ns, new, opts).map(|o| (o, true)),
            Some(old) => self.finish_update(t, ns, name, old, new, sub, opts).map(|o| (o, false)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn finish_update(
        &mut self,
        t: &ResourceType,
        ns: &str,
        name: &str,
        old: Value,
        mut new: Value,
        sub: Subresource,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        self.check_body(t, ns, &mut new)?;
        let body_name = meta_str(&new, "name");
        if body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let rv = meta_str(&new, "resourceVersion");
        if !rv.is_empty() && rv != meta_str(&old, "resourceVersion") {
            return Err(ApiError::conflict(&t.group, &t.plural, name, MODIFIED));
        }
        new = match sub {
            Subresource::Main => {
                if t.status_subresource {
                    set_or_remove(&mut new, "status", old.get("status").cloned());
                }
                new
            }
            Subresource::Status => {
                let mut o = old.clone();
                set_or_remove(&mut o, "status", new.get("status").cloned());
                o
            }
        };
        Self::check_labels(t, name, &new)?;
        // System metadata stays the server's.
        let m = new["metadata"]
            .as_object_mut()
            .ok_or_else(|| ApiError::internal("metadata vanished"))?;
        for f in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ] {
            match old["metadata"].get(f) {
                Some(v) => m.insert(f.to_owned(), v.clone()),
                None => m.remove(f),
            };
        }
        m.insert("resourceVersion".to_owned(), old["metadata"]["resourceVersion"].clone());
        self.check_schema(t, name, &mut new, opts)?;
        let defined = kinds::admit(self, t, &mut new, Some(&old))
            .map_err(|causes| ApiError::invalid(&t.kind, &t.group, name, &causes))?;
        if generation_part(t, &new) != generation_part(t, &old) {
            let g = old["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
            new["metadata"]["generation"] = json!(g);
        }
        if without_rv(&new) == without_rv(&old) || opts.dry_run {
            return Ok(new);
        }
        let key = t.key();
        let obj: ObjKey = (ns.to_owned(), name.to_owned());
        let finalized = !new["metadata"]["deletionTimestamp"].is_null() && finalizers(&new).is_empty();
        if finalized {
            return Ok(self.remove(t, obj, new, old));
        }
        let out = self.commit(&key, obj, EventKind::Modified, new, Some(old));
        if let Some(d) = defined {
            self.registry.register(d);
        }
        Ok(out)
    }

    /// DELETE: removes the object (or, while it has finalizers, marks it with a deletionTimestamp) and returns it.
    /// `options` is the DeleteOptions body; its `preconditions` must hold.
    pub fn delete(
        &mut self,
        t: &ResourceType,
        ns: &str,
        name: &str,
        options: &Value,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let old = self.get_object(t, ns, name)?;
        if t.group.is_empty() && t.plural == "namespaces" && matches!(name, "default" | "kube-system" | "kube-public") {
            return Err(ApiError::forbidden(&format!(
                "namespaces \"{name}\" is forbidden: this namespace may not be deleted"
            )));
        }
        let pre = &options["preconditions"];
        for (field, label) in [("uid", "UID"), ("resourceVersion", "ResourceVersion")] {
            if let Some(want) = pre[field].as_str() {
                let have = meta_str(&old, field);
                if want != have {
                    return Err(ApiError::conflict(
                        &t.group,
                        &t.plural,
                        name,
                        &format!(
                            "Precondition failed: {label} in precondition: {want}, {label} in object meta: {have}"
                        ),
                    ));
                }
            }
        }
        if dry_run {
            return Ok(old);
        }
        let obj: ObjKey = (ns.to_owned(), name.to_owned());
        if !finalizers(&old).is_empty() {
            if !old["metadata"]["deletionTimestamp"].is_null() {
                return Ok(old);
            }
            let mut marked = old.clone();
            marked["metadata"]["deletionTimestamp"] = json!(meta::now());
            marked["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            return Ok(self.commit(&t.key(), obj, EventKind::Modified, marked, Some(old)));
        }
        let last = old.clone();
        Ok(self.remove(t, obj, last, old))
    }

    /// Deletes for good: first what the object owns in the fake (a namespace's objects, a CRD's custom
    /// resources), then the object itself.
    fn remove(&mut self, t: &ResourceType, obj: ObjKey, last: Value, old: Value) -> Value {
        let cascade: Vec<(crate::resources::TypeKey, ObjKey)> = match (t.group.as_str(), t.plural.as_str()) {
            ("", "namespaces") => self
                .objects
                .iter()
                .filter(|(k, _)| self.registry.by_key(k).is_some_and(|t| t.namespaced))
                .flat_map(|(k, m)| {
                    m.keys()
                        .filter(|(ns, _)| *ns == obj.1)
                        .map(move |o| (k.clone(), o.clone()))
                })
                .collect(),
            ("apiextensions.k8s.io", "customresourcedefinitions") => {
                let key = (
                    last["spec"]["group"].as_str().unwrap_or_default().to_owned(),
                    last["spec"]["names"]["plural"].as_str().unwrap_or_default().to_owned(),
                );
                let owned = self
                    .objects
                    .get(&key)
                    .map(|m| m.keys().map(|o| (key.clone(), o.clone())).collect())
                    .unwrap_or_default();
                self.registry.unregister(&key);
                owned
            }
            _ => Vec::new(),
        };
        for (k, o) in cascade {
            if let Some(prev) = self.get(&k, &o).cloned() {
                self.commit(&k, o, EventKind::Deleted, prev.clone(), Some(prev));
            }
        }
        self.commit(&t.key(), obj, EventKind::Deleted, last, Some(old))
    }
}

fn finalizers(o: &Value) -> Vec<Value> {
    o["metadata"]["finalizers"].as_array().cloned().unwrap_or_default()
}

fn set_or_remove(o: &mut Value, field: &str, v: Option<Value>) {
    if let Some(m) = o.as_object_mut() {
        match v {
            Some(v) => m.insert(field.to_owned(), v),
            None => m.remove(field),
        };
    }
}

pub(crate) fn invalid(t: &ResourceType, name: &str, field: &str, problem: String) -> ApiError {
    ApiError::invalid(&t.kind, &t.group, name, &[(field.to_owned(), problem)])
}
