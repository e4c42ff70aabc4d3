//! Real-mode tests (filled in next).
