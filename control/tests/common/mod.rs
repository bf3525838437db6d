//! Test harnesses shared by the integration tests (`mod common;`). Each test binary uses a part.
#![allow(dead_code)]

pub mod etcd;
pub mod kube;
pub mod plane;
pub mod proxy;
