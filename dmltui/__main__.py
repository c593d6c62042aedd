from dmltui.cli import main

main()
