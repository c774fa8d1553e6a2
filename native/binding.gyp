# Build description of snapfs's own N-API addon (native/build/Release/snapfs_native.node).
# Plain C against node_api.h only, so one build serves every Node release with N-API 8.
{
  "targets": [
    {
      "target_name": "snapfs_native",
      "sources": ["src/snapfs_native.c"],
      "defines": ["NAPI_VERSION=8", "_GNU_SOURCE"],
      "cflags_c": ["-std=c11", "-Wall", "-Wextra"]
    }
  ]
}
