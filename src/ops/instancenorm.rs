//! Instance normalization: group norm with one group per channel.
