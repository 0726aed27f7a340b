//! Kubernetes API machinery as pure functions on `serde_json::Value`: what an API server
//! needs to behave like kube-apiserver, with Kubernetes' exact error wording. No I/O, no
//! async; every function is deterministic given its inputs (the caller supplies the
//! time where one is recorded).
//!
//! * [`status`] — `metav1.Status` error bodies (NotFound, AlreadyExists, Conflict, Invalid …).
//! * [`field`] — field-level validation errors (`spec.x: Invalid value: …`).
//! * [`selector`] — label and field selectors (parse, print, match; `metav1.LabelSelector`).
//! * [`patch`] — JSON patch, merge patch, strategic merge patch.
//! * [`types`] — merge semantics of built-in kinds (from Kubernetes' OpenAPI) and CRD schemas.
//! * [`ssa`] — server-side apply with `managedFields`, conflicts and field removal.
//! * [`schema`] — CRD structural schema: validation, defaulting, pruning, CEL rules.
//! * [`quantity`] — resource quantities (`500m`, `128Mi`) compared by value.
//! * [`rbac`] — RBAC authorization, bootstrap roles, forbidden messages, access reviews.
//!
//! How an API server uses it, per request: authorize with [`rbac::authorize`] (deny →
//! [`rbac::forbidden`]); parse `labelSelector`/`fieldSelector` with
//! [`selector::LabelSelector::parse`] / [`selector::FieldSelector::parse`] and match
//! objects ([`selector::object_fields`]); for PATCH pick [`patch::PatchType`] from the
//! content type — JSON/merge/strategic via [`patch`] (strategic only when
//! [`types::supports_strategic_merge`], else [`status::unsupported_patch_type`]), apply via
//! [`ssa::apply`]; record ownership of every other write with [`ssa::update`]; for custom
//! resources run [`schema::CrdSchema::admit`] and answer errors with [`status::invalid`].
//! Every error converts to a `metav1.Status` through [`status::ApiError`].

pub mod field;
pub mod patch;
pub mod quantity;
pub mod rbac;
pub mod schema;
pub mod selector;
pub mod ssa;
pub mod status;
pub mod types;
