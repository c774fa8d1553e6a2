/**
 * The snapfs package API: open stores and talk to mounted file systems from programs.
 */
export { Store, FORMAT_VERSION, DEFAULT_BLOCK_SIZE, DEFAULT_VOLUME } from './store/store.js'
export { checkStore, type CheckReport } from './store/check.js'
export { call as control } from './control/client.js'
export type { MountStatus } from './control/protocol.js'
export { FsError, UserError } from './errors.js'
export { cloneSnapshot, createSnapshot, listSnapshots, showSnapshot, deleteSnapshot, diffSnapshots, restoreFromSnapshot, rollbackToSnapshot, listJobs, mountStatus, snapshotQuota } from './api.js'
export type { CreateOptions, DeleteOptions, DiffChange, DiffEntry, DiffType, QuotaChange, QuotaInfo, RestoreOptions, RestoreResult, RollbackOptions, RollbackResult, JobInfo, SnapshotInfo, SnapshotState } from './api.js'
