//! The decode benchmark (filled in below).
