/**
 * The snapshot API for programs: the operations snapctl offers, typed, on a mounted snapfs
 * (the equivalent of a cloud CreateSnapshot / DescribeSnapshots / DeleteSnapshot API). Each call
 * talks to the daemon of the mount over its control socket; errors reject with a UserError whose
 * message is one line.
 */
import { spawnSync } from 'node:child_process'
import { call } from './control/client.js'
import { absoluteMountpoint } from './daemon/mounts.js'
import { syncMount } from './native.js'
import type { JobInfo, QuotaInfo, RollbackResult, SnapshotInfo } from './fs/snapshots.js'
import type { DiffEntry } from './fs/diff.js'
import type { RestoreResult } from './fs/restore.js'
import type { MountStatus } from './control/protocol.js'

export type { MountStatus } from './control/protocol.js'
export type { JobInfo, QuotaInfo, RollbackResult, SnapshotInfo, SnapshotState } from './fs/snapshots.js'
export type { DiffChange, DiffEntry, DiffType } from './fs/diff.js'
export type { RestoreResult } from './fs/restore.js'

export interface CreateOptions {
  description?: string
}

/**
 * Takes a snapshot of the volume mounted at `mountpoint`: the kernel's buffers for the mount are
 * flushed first, then the daemon commits everything it holds and freezes the block map. Resolves
 * once the snapshot is durable.
 */
export async function createSnapshot (mountpoint: string, name: string, options: CreateOptions = {}): Promise<SnapshotInfo & { elapsedMs: number }> {
  const mnt = absoluteMountpoint(mountpoint)
  flushKernelBuffers(mnt)
  return await call(mnt, 'snapshot.create', { name, description: options.description ?? '' }) as SnapshotInfo & { elapsedMs: number }
}

/** Every snapshot of the mounted volume, oldest first, with its space accounting. */
export async function listSnapshots (mountpoint: string): Promise<SnapshotInfo[]> {
  return await call(absoluteMountpoint(mountpoint), 'snapshot.list') as SnapshotInfo[]
}

export async function showSnapshot (mountpoint: string, name: string): Promise<SnapshotInfo> {
  return await call(absoluteMountpoint(mountpoint), 'snapshot.show', { name }) as SnapshotInfo
}

export interface DeleteOptions {
  /** Resolve once the snapshot's blocks are freed (default), or as soon as it is hidden. */
  wait?: boolean
}

/** Deletes a snapshot; with `wait` (the default) resolves with the bytes freed once it is gone. */
export async function deleteSnapshot (mountpoint: string, name: string, options: DeleteOptions = {}): Promise<{ name: string, freed: number }> {
  return await call(absoluteMountpoint(mountpoint), 'snapshot.delete', { name, wait: options.wait !== false }) as { name: string, freed: number }
}

/**
 * The paths added, removed, modified and renamed from snapshot `from` to snapshot `to`, or to the
 * live volume when `to` is left out. Paths are relative to the mount, starting with "/".
 */
export async function diffSnapshots (mountpoint: string, from: string, to?: string): Promise<DiffEntry[]> {
  return await call(absoluteMountpoint(mountpoint), 'snapshot.diff', { from, to: to ?? null }) as DiffEntry[]
}

export interface RestoreOptions {
  /** Where to put it in the live volume (default: the same path), from the mount's root. */
  to?: string
}

/**
 * Brings `path` (from the mount's root, e.g. "/project/src") back from snapshot `name`, sharing
 * its blocks; an existing file there is replaced, an existing directory refused.
 */
export async function restoreFromSnapshot (mountpoint: string, name: string, path: string, options: RestoreOptions = {}): Promise<RestoreResult & { path: string }> {
  return await call(absoluteMountpoint(mountpoint), 'snapshot.restore', { name, path, to: options.to ?? null }) as RestoreResult & { path: string }
}

export interface RollbackOptions {
  /** Only list what would change. */
  dryRun?: boolean
  /** Take a snapshot of the state before (default true). */
  safetySnapshot?: boolean
  /** Roll back even with files open on the mount (their descriptors then fail with ESTALE). */
  force?: boolean
  /**
   * Resolve once every changed record is set back (the default); false resolves as soon as the
   * volume reads as the snapshot, the rest going on in the background (see `listJobs`).
   */
  wait?: boolean
}

/**
 * Makes the live volume exactly what snapshot `name` holds, in time proportional to what changed
 * since, keeping every snapshot (newer ones included). The mount keeps answering meanwhile.
 */
export async function rollbackToSnapshot (mountpoint: string, name: string, options: RollbackOptions = {}): Promise<RollbackResult> {
  return await call(absoluteMountpoint(mountpoint), 'snapshot.rollback', {
    name, dryRun: options.dryRun === true, safety: options.safetySnapshot !== false, force: options.force === true, wait: options.wait !== false
  }) as RollbackResult
}

/** The daemon behind a mount: its store, volume, transport, page cache and what the kernel sends it. */
export async function mountStatus (mountpoint: string): Promise<MountStatus> {
  return await call(absoluteMountpoint(mountpoint), 'status') as MountStatus
}

/** The long operations (rollback, delete, clone, restore) the daemon is running, with their progress. */
export async function listJobs (mountpoint: string): Promise<JobInfo[]> {
  return await call(absoluteMountpoint(mountpoint), 'jobs') as JobInfo[]
}

/**
 * Creates volume `volume` in the same store as a clone of snapshot `name`: it starts as the
 * snapshot's content and shares every block with it. Mount it with
 * `snapfs mount STORE --volume VOLUME MOUNTPOINT` once the copy of its records is done (`wait`,
 * the default, resolves then with the number of inodes).
 */
export async function cloneSnapshot (mountpoint: string, name: string, volume: string, options: { wait?: boolean } = {}): Promise<{ volume: string, origin: string, records: number }> {
  return await call(absoluteMountpoint(mountpoint), 'snapshot.clone', { name, volume, wait: options.wait !== false }) as { volume: string, origin: string, records: number }
}

export interface QuotaChange {
  /** Most snapshots the volume may have; null lifts the limit. */
  maxCount?: number | null
  /** Most bytes its snapshots may hold before a new one is refused; null lifts the limit. */
  maxBytes?: number | null
}

/** Shows the volume's snapshot quotas, setting the ones given first. */
export async function snapshotQuota (mountpoint: string, change: QuotaChange = {}): Promise<QuotaInfo> {
  return await call(absoluteMountpoint(mountpoint), 'snapshot.quota', { ...change }) as QuotaInfo
}

/** syncfs(2) on the mount, through the native addon, or `sync -f` when the addon is missing. */
function flushKernelBuffers (mnt: string): void {
  try {
    syncMount(mnt)
  } catch {
    spawnSync('sync', ['-f', mnt], { stdio: 'ignore' })
  }
}
