// What speedscope makes of profile files: run by script/check-speedscope,
// which copies this file into a speedscope source tree and bundles it there
// with esbuild (so './src/...' are speedscope's own modules, unmodified).
//
// Each file goes through importProfilesFromArrayBuffer, the entry point
// speedscope's own importer tests use (src/lib/test-utils.ts): gzip is undone
// by its MaybeCompressedDataReader (pako), then importAsPprofProfile decodes
// profile.proto with its generated protobufjs module. One JSON line per file:
//   {file, log, imported, name, unit, total, total_text, frames:
//    [{name, file, line, self, total}], export}
// with log what the importer printed (which importer it took), frames in
// speedscope's own order (Profile.forEachFrame) and export what its "Export"
// button writes (exportProfileGroup: shared frames, sampled stacks, weights).
//
// --snapshot SNAP FILE: import FILE and compare each frame's name, selfWeight
// and totalWeight with the first "frames" list of speedscope's jest snapshot
// SNAP (its pprof test's): a check that this harness sees what speedscope's
// own test suite sees. Exit 1 on a difference.
import * as fs from 'fs'
import * as path from 'path'
import {importProfilesFromArrayBuffer} from './src/import'
import {exportProfileGroup} from './src/lib/file-format'

async function view(file: string): Promise<any> {
  const data = fs.readFileSync(file)
  const buffer = data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength) as ArrayBuffer
  const log: string[] = []
  const saved = console.log
  console.log = (...a: any[]) => log.push(a.join(' '))
  let group
  try {
    group = await importProfilesFromArrayBuffer(path.basename(file), buffer)
  } finally {
    console.log = saved
  }
  if (!group) return {file, log, imported: false}
  const out: any = {file, log, imported: true, profiles: group.profiles.length}
  const p = group.profiles[0]
  const frames: any[] = []
  p.forEachFrame(f =>
    frames.push({name: f.name, file: f.file, line: f.line, self: f.getSelfWeight(), total: f.getTotalWeight()}),
  )
  Object.assign(out, {
    name: p.getName(),
    unit: p.getWeightUnit(),
    total: p.getTotalWeight(),
    total_text: p.formatValue(p.getTotalWeight()),
    frames,
    export: exportProfileGroup(group),
  })
  return out
}

async function snapshot(snap: string, file: string): Promise<number> {
  const text = fs.readFileSync(snap, 'utf8')
  const list = text.slice(text.indexOf('"frames": ['), text.indexOf('"stacks": ['))
  const want: string[] = []
  const re = /"name": "([^"]*)",\s*"selfWeight": (\d+),\s*"totalWeight": (\d+)/g
  for (let m; (m = re.exec(list)); ) want.push(`${m[1]} ${m[2]} ${m[3]}`)
  const v = await view(file)
  const got = v.imported ? v.frames.map((f: any) => `${f.name} ${f.self} ${f.total}`) : []
  const same = want.length > 0 && JSON.stringify(want) === JSON.stringify(got)
  console.log(`${same ? 'ok' : 'DIFFERENT'}: ${got.length} frames of ${file} against ${want.length} in ${snap}`)
  if (!same) console.log(JSON.stringify({want, got}, null, 1))
  return same ? 0 : 1
}

async function main(args: string[]) {
  if (args[0] === '--snapshot') process.exit(await snapshot(args[1], args[2]))
  for (const f of args) console.log(JSON.stringify(await view(f)))
}

main(process.argv.slice(2)).catch(e => {
  console.error(e)
  process.exit(1)
})
