//! The scripted world around one hub (moving here from `core/src/hub/tests/`, issue 15).
