//! Backends that run graphs.
