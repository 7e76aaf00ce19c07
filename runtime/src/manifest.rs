//! Graph-set manifests.
