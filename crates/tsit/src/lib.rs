//! tsit
