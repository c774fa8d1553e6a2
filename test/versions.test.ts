/**
 * The generation rules of the store, on a real LMDB store through the live volume (no mount):
 * while no snapshot exists every change happens in place; once the latest snapshot's generation
 * is behind the volume's, a change to a record born before it keeps the old version in history,
 * lists it in the dead list under the new generation and keeps its block alive, while a second
 * change in the same generation happens in place again. Deleting a snapshot frees exactly what
 * only it sees (what `usedBytes` said), step by step, while the others read as before, and leaves
 * nothing behind. `snapfs check` accepts every state.
 */
import t, { type Test } from 'tap'
import { mkdtemp, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { Store } from '../src/store/store.js'
import { checkStore } from '../src/store/check.js'
import { LiveVolume } from '../src/fs/volume.js'
import { Table, decodeBmap, inodeKey, prefixRange } from '../src/store/keys.js'
import { deleteStep, freezeSnapshot, markDeleting, snapshotsOf, usedBytes } from '../src/store/snapshots.js'
import { SnapshotView } from '../src/fs/snapshot-view.js'

const owner = { uid: 0, gid: 0 }
const BLOCK = 64 * 1024

async function fresh (t: Test): Promise<{ store: Store, volume: LiveVolume }> {
  const dir = await mkdtemp('/var/tmp/snapfs-versions-')
  const store = await Store.init(join(dir, 'store'))
  t.teardown(async () => {
    await store.close()
    await rm(dir, { recursive: true, force: true })
  })
  return { store, volume: new LiveVolume(store, store.volume('main'), { cacheBytes: 16 << 20, dirtyAgeMs: 60_000 }) }
}

/** Takes a snapshot: freezes generation g, and the volume writes in g + 1 from now on. */
async function freeze (volume: LiveVolume, name: string): Promise<void> {
  await volume.writeback.commitWith(() => freezeSnapshot(volume.store, volume.record, { name, description: '', now: Date.now() }), { allPages: true })
}

const count = (store: Store, db: 'history' | 'deadlist' | 'births'): number => store[db].getKeysCount()
const historyOf = (store: Store, table: Table): Array<{ key: Buffer, value: { d: number, v: Buffer } }> =>
  [...store.history.getRange()].filter(({ key }) => key[0] === table) as Array<{ key: Buffer, value: { d: number, v: Buffer } }>

t.test('without snapshots every change is in place', async t => {
  const { store, volume } = await fresh(t)
  const file = volume.mknod(1, 'a', 0o100644, 0, owner)
  await volume.write(file.ino, 0, Buffer.alloc(3 * BLOCK, 1))
  await volume.flush()
  const blocksBefore = store.blocks.getKeysCount()
  await volume.write(file.ino, BLOCK, Buffer.alloc(BLOCK, 2))
  volume.setattr(file.ino, { size: BLOCK })
  volume.rename(1, 'a', 1, 'b')
  await volume.flush()
  t.equal(count(store, 'history'), 0, 'no history')
  t.equal(count(store, 'deadlist'), 0, 'no dead list')
  t.equal(store.blocks.getKeysCount(), blocksBefore - 2, 'truncated blocks are freed at once')
  t.same(checkStore(store).problems, [])
})

t.test('after a generation is frozen, old versions move to history and keep their blocks', async t => {
  const { store, volume } = await fresh(t)
  const file = volume.mknod(1, 'a', 0o100644, 0, owner)
  volume.mkdir(1, 'd', 0o755, owner)
  await volume.write(file.ino, 0, Buffer.alloc(3 * BLOCK, 1))
  await volume.flush()
  const frozenBlocks = store.blocks.getKeysCount()
  await freeze(volume, 'first')

  await volume.write(file.ino, BLOCK, Buffer.alloc(BLOCK, 2))
  volume.setattr(file.ino, { size: BLOCK * 2 })
  volume.rename(1, 'd', 1, 'e')
  await volume.flush()

  const bmapHistory = historyOf(store, Table.Bmap)
  t.equal(bmapHistory.length, 2, 'the overwritten and the truncated block are kept')
  t.ok(bmapHistory.every(({ value }) => value.d === 2), 'both died in generation 2')
  t.ok(bmapHistory.every(({ value }) => decodeBmap(value.v).birth === 1), 'both were born in generation 1')
  t.equal(historyOf(store, Table.Dirent).length, 1, 'the renamed entry is kept')
  t.ok(historyOf(store, Table.Inode).length >= 2, 'the old file and root records are kept')
  t.equal(count(store, 'deadlist'), count(store, 'history'), 'every history version is in the dead list')
  t.equal(store.blocks.getKeysCount(), frozenBlocks + 1, 'no block freed, one new block for the overwrite')
  const buf = Buffer.alloc(BLOCK)
  volume.read(file.ino, BLOCK, BLOCK, buf)
  t.ok(buf.equals(Buffer.alloc(BLOCK, 2)), 'the live file reads the new data')
  t.same(checkStore(store).problems, [], 'check accepts history and shared references')

  const historyBefore = count(store, 'history')
  const birthsBefore = count(store, 'births')
  await volume.write(file.ino, BLOCK, Buffer.alloc(BLOCK, 3))
  await volume.flush()
  t.equal(count(store, 'history'), historyBefore, 'a second overwrite in the same generation is in place')
  t.equal(count(store, 'births'), birthsBefore, 'and adds no birth')
  t.same(checkStore(store).problems, [])

  volume.unlink(1, 'a')
  await volume.flush()
  const fileKeys = [...store.bmap.getKeys(prefixRange(inodeKey(volume.record.id, file.ino)))]
  t.equal(fileKeys.length, 0, 'the deleted file has no block map heads')
  t.equal(historyOf(store, Table.Bmap).length, 3, 'its frozen first block joins history; the generation-2 block is freed')
  t.same(checkStore(store).problems, [], 'check still agrees')
})

/** The bytes of file `name` in the root of snapshot `snapshot`, read through a snapshot view. */
function readSnapshot (volume: LiveVolume, snapshot: string, name: string): Buffer {
  const record = snapshotsOf(volume.store, volume.record.id).find(s => s.name === snapshot)
  if (record === undefined) throw new Error(`no snapshot ${snapshot}`)
  const view = new SnapshotView(volume.store, volume.record.id, record, 4 << 20, () => {})
  const file = view.lookup(1, name)
  const buf = Buffer.alloc(view.getattr(file.ino).size)
  view.read(file.ino, 0, buf.length, buf)
  return buf
}

/** Runs a snapshot's delete to the end, `batch` dead-list entries per transaction, `between` after each. */
async function deleteAll (volume: LiveVolume, name: string, batch: number, between: () => Promise<void> = async () => {}): Promise<number> {
  const { gen } = await volume.writeback.commitWith(() => markDeleting(volume.store, volume.record, name), { allPages: false })
  for (;;) {
    const step = await volume.writeback.commitWith(() => deleteStep(volume.store, volume.record, gen, batch), { allPages: false })
    if (step === null || step.finished) return step?.record.freed ?? 0
    await between()
  }
}

t.test('deleting a snapshot frees what only it sees and leaves the others as they were', async t => {
  const { store, volume } = await fresh(t)
  const file = volume.mknod(1, 'f', 0o100644, 0, owner)
  const states: Buffer[] = []
  for (const [i, name] of ['a', 'b', 'c'].entries()) {
    await volume.write(file.ino, i * BLOCK, Buffer.alloc(2 * BLOCK, 10 + i))
    await volume.flush()
    await freeze(volume, name)
    states.push(readSnapshot(volume, name, 'f'))
  }
  const blocksBefore = store.blocks.getKeysCount()
  const usedB = usedBytes(store, volume.record, snapshotsOf(store, volume.record.id)[1])
  const freed = await deleteAll(volume, 'b', 1)
  t.equal(freed, usedB, 'it frees what list showed as USED')
  t.equal(freed, BLOCK, 'exactly the one block only b saw')
  t.equal(store.blocks.getKeysCount(), blocksBefore - 1)
  t.ok(readSnapshot(volume, 'a', 'f').equals(states[0]), 'a reads as before')
  t.ok(readSnapshot(volume, 'c', 'f').equals(states[2]), 'c reads as before')
  t.same(checkStore(store).problems, [], 'check agrees, accounting included')

  await deleteAll(volume, 'c', 2)
  await deleteAll(volume, 'a', 1000)
  volume.unlink(1, 'f')
  await volume.flush()
  t.same({ used: volume.record.used, written: volume.record.written, held: volume.record.snapshotBytes }, { used: 0, written: 0, held: 0 }, 'accounting is back to zero')
  t.same([count(store, 'history'), count(store, 'deadlist'), store.blocks.getKeysCount()], [0, 0, 0], 'no history, dead list or block is left')
  t.same(checkStore(store).problems, [])
})

t.test('writes during the delete of the newest snapshot are freed with it, not leaked', async t => {
  const { store, volume } = await fresh(t)
  const file = volume.mknod(1, 'f', 0o100644, 0, owner)
  await volume.write(file.ino, 0, Buffer.alloc(8 * BLOCK, 1))
  await freeze(volume, 'old')
  await volume.write(file.ino, 0, Buffer.alloc(8 * BLOCK, 2))
  volume.mknod(1, 'g', 0o100644, 0, owner)
  await freeze(volume, 'new')
  await volume.write(file.ino, 0, Buffer.alloc(4 * BLOCK, 3))
  await volume.flush()
  let round = 0
  await deleteAll(volume, 'new', 1, async () => {
    round++
    // The root and block 4.. were last written in the deleted snapshot's generation: these die
    // now, and the root's dead-list entry sorts before the delete's cursor.
    volume.mknod(1, `h${round}`, 0o100644, 0, owner)
    await volume.write(file.ino, (4 + (round % 4)) * BLOCK, Buffer.alloc(BLOCK, 3 + round))
    await volume.flush()
  })
  t.ok(round > 0, 'writes happened between delete steps')
  t.equal(volume.record.lastSnapGen, snapshotsOf(store, volume.record.id)[0].gen, 'the volume\'s latest snapshot is old again')
  t.ok(readSnapshot(volume, 'old', 'f').equals(Buffer.alloc(8 * BLOCK, 1)), 'old reads as before')
  t.same(checkStore(store).problems, [], 'no version is left that no snapshot sees')
})
