/**
 * Where a mount's control socket lives: one Unix socket per mount point, in a directory only its
 * owner can enter (/run/snapfs for root, $XDG_RUNTIME_DIR/snapfs or /tmp/snapfs-UID otherwise).
 * A client looks in the directory of the mount's owner, so another user is told "permission
 * denied" rather than that no daemon answers.
 */
import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'

/** The runtime directory of user `uid` (by default, this process's user). */
export function runtimeDir (uid = process.getuid?.() ?? 0): string {
  if (uid === 0) return '/run/snapfs'
  const xdg = process.env.XDG_RUNTIME_DIR
  if (uid === process.getuid?.() && xdg !== undefined && xdg.length > 0) return path.join(xdg, 'snapfs')
  const standard = `/run/user/${uid}`
  if (uid !== process.getuid?.() && fs.existsSync(standard)) return path.join(standard, 'snapfs')
  return path.join(os.tmpdir(), `snapfs-${uid}`)
}

/** The control socket of the mount at `mountpoint` (an absolute path) owned by user `uid`. */
export function socketPath (mountpoint: string, uid?: number): string {
  const digest = crypto.createHash('sha256').update(mountpoint).digest('hex').slice(0, 24)
  return path.join(runtimeDir(uid), `${digest}.sock`)
}

/** Creates the runtime directory, owner-only. */
export function ensureRuntimeDir (): string {
  const dir = runtimeDir()
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 })
  fs.chmodSync(dir, 0o700)
  return dir
}
