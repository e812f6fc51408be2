//! Shared harness for the suites in tests/.
