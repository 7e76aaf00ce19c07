//! Golden-tensor validation of a graph set.
