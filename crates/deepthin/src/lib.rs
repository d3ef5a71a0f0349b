//! deepthin
