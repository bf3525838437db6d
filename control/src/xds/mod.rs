//! The xDS server (being written).
