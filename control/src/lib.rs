//! `l7mp-control`: the xDS control plane. Only the crate skeleton exists so far; `README.md` in this folder says
//! what comes and which issue brings it.
