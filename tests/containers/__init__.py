"""The testcontainers test backend: a Docker engine, images built from deploy/containers/, and the
labelled containers of one test run (swept when their run is gone). See docs/testcontainers.md."""
