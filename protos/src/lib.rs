//! `l7mp-protos`: generated Rust for l7mp's own `.proto` files. Only the crate skeleton exists so far; `README.md`
//! in this folder says what comes.
