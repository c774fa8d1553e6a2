# Build description of snapfs's own N-API addon (native/build/Release/snapfs_native.node).
# Plain C against node_api.h, so one build serves every Node release with N-API 8, and libfuse 3
# (its flags from pkg-config) for the FUSE transport in src/fuse_session.c.
{
  "targets": [
    {
      "target_name": "snapfs_native",
      "sources": ["src/snapfs_native.c", "src/fuse_session.c"],
      "defines": ["NAPI_VERSION=8", "_GNU_SOURCE"],
      "cflags_c": ["-std=c11", "-Wall", "-Wextra", "<!@(pkg-config --cflags fuse3)"],
      "libraries": ["<!@(pkg-config --libs fuse3)"]
    }
  ]
}
