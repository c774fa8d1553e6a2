/*
 * The FUSE transport's entry point for the addon's module initialisation; everything else about
 * it is in fuse_session.c.
 */
#ifndef SNAPFS_FUSE_SESSION_H
#define SNAPFS_FUSE_SESSION_H

#include <node_api.h>

/* Adds the transport's functions to `exports`; returns napi_ok or the status of the call that
 * failed, with a JS exception pending. */
napi_status fuse_session_register(napi_env env, napi_value exports);

#endif
