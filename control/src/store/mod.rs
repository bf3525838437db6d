//! The store of the desired state (being written).
