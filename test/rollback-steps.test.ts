/**
 * A rollback step by step, on a real LMDB store through the live volume (no mount): once the
 * scan has listed the changes and the phase has turned, the volume reads exactly as the snapshot
 * before a single record is set back; files written, truncated, unlinked and created while the
 * records are set back keep those changes when the rollback finishes, also when a new volume
 * object (a restarted daemon) takes over half-way; `snapfs check` accepts every state in between.
 */
import t, { type Test } from 'tap'
import { createHash } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { Store } from '../src/store/store.js'
import { checkStore } from '../src/store/check.js'
import { LiveVolume } from '../src/fs/volume.js'
import { freezeSnapshot, snapshotsOf } from '../src/store/snapshots.js'
import { applyStep, beginRollback, pendingCount, scanStep, switchRollback } from '../src/store/rollback.js'
import { isDir, isLink, isReg } from '../src/fs/inode.js'

const owner = { uid: 0, gid: 0 }
const BLOCK = 64 * 1024
const options = { cacheBytes: 16 << 20, dirtyAgeMs: 60_000 }

async function fresh (t: Test): Promise<{ store: Store, volume: LiveVolume }> {
  const dir = await mkdtemp('/var/tmp/snapfs-rollback-steps-')
  const store = await Store.init(join(dir, 'store'))
  t.teardown(async () => {
    await store.close()
    await rm(dir, { recursive: true, force: true })
  })
  return { store, volume: new LiveVolume(store, store.volume('main'), options) }
}

/** Every path of the volume with what a program sees of it (data by hash, xattrs, link target). */
function capture (volume: LiveVolume): Record<string, unknown> {
  const out: Record<string, unknown> = {}
  const walk = (dir: number, prefix: string): void => {
    for (const { name, ino } of volume.readdir(dir).sort((a, b) => a.name.localeCompare(b.name))) {
      const inode = volume.inode(ino)
      const xattrs = Object.fromEntries(volume.listxattr(ino).sort().map(key => [key, volume.getxattr(ino, key).toString('hex')]))
      const entry: Record<string, unknown> = { mode: inode.mode, uid: inode.uid, size: inode.size, nlink: inode.nlink, xattrs }
      if (isReg(inode.mode)) {
        const data = Buffer.alloc(inode.size)
        volume.read(ino, 0, inode.size, data)
        entry.data = createHash('sha256').update(data).digest('hex')
      }
      if (isLink(inode.mode)) entry.target = volume.readlink(ino)
      out[prefix + name] = entry
      if (isDir(inode.mode)) walk(ino, prefix + name + '/')
    }
  }
  walk(1, '/')
  return out
}

const fill = (blocks: number, byte: number): Buffer => Buffer.alloc(blocks * BLOCK, byte)

t.test('the volume reads as the snapshot from the switch on; changes made while records are set back stay', async t => {
  const { store, volume } = await fresh(t)
  const dir = volume.mkdir(1, 'd', 0o755, owner)
  const files: number[] = []
  for (let i = 0; i < 12; i++) {
    const file = volume.mknod(dir.ino, `f${i}`, 0o100644, 0, owner)
    await volume.write(file.ino, 0, fill(3, i + 1))
    files.push(file.ino)
  }
  volume.setxattr(files[0], 'user.tag', Buffer.from('snap'), 0)
  volume.link(files[1], 1, 'hard')
  volume.symlink(1, 'link', 'd/f0', owner)
  await volume.flush()
  await volume.writeback.commitWith(() => freezeSnapshot(store, volume.record, { name: 'snap', description: '', now: Date.now() }), { allPages: true })
  const atSnapshot = capture(volume)

  // After the snapshot: overwrite, truncate, unlink, create, rename, chmod, xattrs.
  await volume.write(files[0], BLOCK, fill(1, 0xaa))
  volume.setattr(files[2], { size: 0 })
  volume.setattr(files[3], { size: 5 * BLOCK })
  volume.unlink(dir.ino, 'f4')
  volume.unlink(1, 'hard')
  volume.rename(dir.ino, 'f5', 1, 'moved')
  volume.setattr(files[6], { mode: 0o100600 })
  volume.setxattr(files[0], 'user.tag', Buffer.from('live'), 0)
  volume.setxattr(files[7], 'user.new', Buffer.from('x'), 0)
  const extra = volume.mknod(dir.ino, 'new', 0o100644, 0, owner)
  await volume.write(extra.ino, 0, fill(2, 0xbb))
  volume.mkdir(1, 'newdir', 0o755, owner)
  await volume.flush()
  const before = capture(volume)
  t.not(JSON.stringify(before), JSON.stringify(atSnapshot), 'the volume changed after the snapshot')

  const snapshot = snapshotsOf(store, volume.record.id)[0]
  await volume.writeback.commitWith(() => beginRollback(store, volume.record, snapshot, Date.now()), { allPages: false })
  let scans = 0
  while (!await volume.writeback.commitWith(() => scanStep(store, volume.record, 7), { allPages: false })) scans++
  t.ok(scans > 1, `the scan took ${scans + 1} steps of 7 records`)
  t.same(capture(volume), before, 'the scan changes nothing the volume reads')
  const release = volume.holdWrites()
  await volume.writeback.commitWith(() => switchRollback(store, volume.record), { allPages: true, blocking: true })
  volume.reload()
  release()
  const total = pendingCount(store, volume.record.id)
  t.ok(total > 20, `${total} records to set back`)
  t.same(capture(volume), atSnapshot, 'once the phase turns, the volume reads as the snapshot with no record set back yet')
  t.same(checkStore(store).problems, [], 'check reads the volume as the snapshot too')

  await volume.writeback.commitWith(() => applyStep(store, volume.record, 5), { allPages: false })
  t.same(capture(volume), atSnapshot, 'still the snapshot after one step')

  // Changes while records are set back, to records still pending.
  await volume.write(files[0], BLOCK + 10, Buffer.from('written during the rollback'))
  volume.setattr(files[2], { size: 0 })
  volume.setattr(files[2], { size: 2 * BLOCK })
  volume.unlink(dir.ino, 'f8')
  volume.setxattr(files[0], 'user.during', Buffer.from('y'), 0)
  volume.mknod(dir.ino, 'during', 0o100644, 0, owner)
  await volume.flush()
  const during = capture(volume)
  const f2 = Buffer.alloc(2 * BLOCK, 1)
  volume.read(files[2], 0, 2 * BLOCK, f2)
  t.ok(f2.equals(Buffer.alloc(2 * BLOCK)), 'a file truncated to nothing and grown reads zeros, not the snapshot\'s blocks')
  t.same(checkStore(store).problems, [], 'check passes in the middle')

  await volume.writeback.commitWith(() => applyStep(store, volume.record, 5), { allPages: false })
  const restarted = new LiveVolume(store, store.volume('main'), options)
  t.same(capture(restarted), during, 'a restarted daemon reads the same volume half-way')
  let steps = 0
  while (!await restarted.writeback.commitWith(() => applyStep(store, restarted.record, 3), { allPages: false })) steps++
  restarted.rollbackDone()
  t.ok(steps > 1, `the rest took ${steps + 1} steps`)
  t.equal(restarted.record.rollback, undefined, 'the rollback is over')
  t.equal(pendingCount(store, restarted.record.id), 0, 'nothing is pending')
  t.same(capture(restarted), during, 'every change made during the rollback is kept')
  const data = Buffer.alloc(29)
  restarted.read(files[0], BLOCK + 9, 29, data)
  t.same([...data], [1, ...Buffer.from('written during the rollback'), 1], 'a write into a block still pending lands on the snapshot\'s bytes')
  t.same(checkStore(store).problems, [], 'check passes at the end')
  const fresh2 = new LiveVolume(store, store.volume('main'), options)
  t.same(capture(fresh2), during, 'and the store alone reads the same')
})
